"""The task-and-epoch protocol of the CVPR'21 code: a training call's epochs, each epoch's batches (augmented
in chunks of whole batches, one host sync per epoch, shared over torchrun ranks), the evaluation rule per
epoch, and the anytime evaluation of the online stream pass. A part of the Trainer."""
from __future__ import annotations

import math
import sys
import time
from typing import Callable

import torch
from tqdm import tqdm

from methods.engine.common import DivergedError, FitResult, own_rows
from methods.engine.optim import warm_start_lr
from methods.engine.sample_wise import OneStepPerChunk
from utils.data.batches import aug_spans
from utils.data.folder import read_ahead
from utils.run import dist


class EpochLoop:
    """The Trainer's training calls (``fit``) and epochs."""

    def fit(self, phase: str, n_epoch: int) -> FitResult:
        """One training call: ``n_epoch`` epochs, each evaluated when the rule says so."""
        m = self.method
        res = FitResult(best_acc=0.0)
        m.before_fit(phase)
        for epoch in range(n_epoch):
            rec = self.train_epoch(phase, epoch)
            if m.eval_every_epoch and not self.settings.sample_wise and self.evaluates_epoch(epoch, n_epoch):
                ev = self.evaluate(self.test_idx)
                rec.update(test_loss=ev["avg_loss"], test_acc=ev["avg_acc"])
                res.best_acc = max(res.best_acc, ev["avg_acc"])
                res.last = ev
            res.epochs.append(rec)
            self.log_epoch(phase, rec)
        self.after_fit_timed(phase)
        return res

    def after_fit_timed(self, phase: str) -> None:
        """``after_fit``, its time in the method's own phase (EWC/RWalk's importance) when it names one."""
        m = self.method
        t0 = time.perf_counter()
        m.after_fit(self.task_id, phase)
        if m.after_fit_timer:
            self.timers[m.after_fit_timer] += time.perf_counter() - t0

    def evaluates_epoch(self, epoch: int, n_epoch: int) -> bool:
        """Every epoch (the protocol), or with --eval_epochs last_task only the last epoch of each
        call before the final task: evaluation has no effect on training, so the final task's
        numbers (A_last, A_last_final) are unchanged."""
        return self.settings.eval_epochs == "all" or self.last_task or epoch == n_epoch - 1

    def evaluate_at_end(self, phase: str, res: FitResult) -> FitResult:
        """The one evaluation of a method that is evaluated after its memory update (iCaRL)."""
        ev = self.evaluate(self.test_idx)
        if res.epochs:
            res.epochs[-1].update(test_loss=ev["avg_loss"], test_acc=ev["avg_acc"])
            self.log_epoch(phase, res.epochs[-1], "after the memory update")
        return FitResult(best_acc=ev["avg_acc"], last=ev, epochs=res.epochs)

    def train_epoch(self, phase: str, epoch: int) -> dict:
        """One epoch at the public schedule; its record, with no test numbers yet."""
        m = self.method
        if m.replays and phase != "memory":
            return self.replay_epoch(phase, epoch)
        lr = warm_start_lr(m.optimizer, m.scheduler, self.settings.lr, epoch)
        batches = m.epoch_batches(phase)
        self.samples[phase] += sum(len(b) for b in batches)
        loss, acc = self.run_epoch(phase, epoch, batches)
        return {"epoch": epoch, "train_loss": loss, "train_acc": acc, "test_loss": None, "test_acc": None, "lr": lr}

    def replay_epoch(self, phase: str, epoch: int) -> dict:
        """An epoch of a replaying method (ER's family): the stream shuffled, in chunks of --temp_batchsize (the
        last partial chunk dropped), one step per chunk on ``replay_batch``; each stream sample is offered to
        the memory in the first epoch only; the method keeps its own learning rate. Online, the anytime
        evaluations run at their sample positions."""
        m, tb = self.method, self.settings.temp_batchsize
        order = m.stream[torch.randperm(len(m.stream), device=m.stream.device)]
        events = self.eval_events(len(order)) if phase == "stream" else []
        loss, correct, n_seen, n_acc, n_steps = self.train_chunks(order, list(range(tb, len(order) + 1, tb)),
                                                                  OneStepPerChunk(), events, remember=epoch == 0)
        if phase == "stream":
            self.stream_seen += len(order)
        self.samples[phase] += n_seen
        loss = float(loss) / max(n_steps, 1)
        if not math.isfinite(loss):
            raise DivergedError(self.task_id, phase, epoch, loss)
        return {"epoch": epoch, "train_loss": loss, "train_acc": 100.0 * int(correct) / max(n_acc, 1),
                "test_loss": None, "test_acc": None, "lr": m.optimizer.param_groups[0]["lr"]}

    def run_epoch(self, phase: str, epoch: int, batches: list[torch.Tensor]) -> tuple[float, float]:
        """Train on the given index batches; augmentation (and ``chunk_extras``) runs on chunks of
        whole batches; one host synchronisation per epoch. Under torchrun each rank trains on its
        share of every batch (the anytime rule still counts whole batches) and the epoch's loss and
        accuracy are summed over the ranks."""
        m = self.method
        m.model.train(m.train_mode(phase))
        if not batches:
            return 0.0, 0.0
        total_loss = torch.zeros((), device=m.device)
        correct = torch.zeros((), device=m.device, dtype=torch.long)
        n_seen = 0
        imgs, labels = dist.shared_decoding(self.data.train.images), self.data.train_labels
        anytime = self.anytime_hook(phase, batches)
        k = 0
        bar = tqdm(total=len(batches), desc="train", leave=False, disable=not sys.stderr.isatty(), mininterval=0.5)
        spans = aug_spans([len(b) for b in batches])
        chunks = [torch.cat(batches[i:j]) for i, j in spans]
        read_ahead(imgs, chunks)
        batches_all, batches = batches, [dist.shard(b) for b in batches]
        for (i, j), idx in zip(spans, chunks):
            x_all = m.train_aug(imgs[idx])  # under torchrun: the whole chunk, as one process draws it, ...
            y_all = labels[idx]
            if dist.info().active:  # ... of which each rank keeps its share of every batch
                rows = own_rows([len(b) for b in batches_all[i:j]], x_all.device)
                x_all, y_all = x_all[rows], y_all[rows]
            extras = m.chunk_extras(x_all)
            o = 0
            for b in batches[i:j]:
                s = len(b)
                extra = None if extras is None else {key: v[o:o + s] for key, v in extras.items()}
                with m.autocast():
                    loss, logits, y = m.train_step(x_all[o:o + s], y_all[o:o + s], b, extra)
                total_loss += loss.detach()
                correct += (logits.detach().argmax(1) == y).sum()
                n_seen += s
                o += s
                if anytime is not None:
                    anytime(k)
                k += 1
            bar.update(j - i)
        bar.close()
        if dist.info().active:  # mean over the ranks of their mean losses (equal shares: the batch's mean)
            fp = float(dist.rng_fingerprint())
            sums = dist.all_sum(torch.tensor([total_loss.item(), correct.item(), fp, fp * fp], dtype=torch.float64,
                                             device=m.device))  # on the device: NCCL reduces GPU tensors only
            if sums[3] * dist.info().world != sums[2] * sums[2]:  # not every rank has the same fingerprint
                raise RuntimeError(f"the ranks' random streams parted in task {self.task_id}, {phase} epoch "
                                   f"{epoch + 1}: they would train on different batches (a bug; please report it)")
            total_loss, correct = sums[0] / dist.info().world, int(sums[1].round())
            n_seen = sum(len(b) for b in batches_all)
        loss = float(total_loss) / len(batches)  # the epoch's one host sync
        if not math.isfinite(loss):
            raise DivergedError(self.task_id, phase, epoch, loss)
        return loss, 100.0 * int(correct) / max(n_seen, 1)

    def anytime_hook(self, phase: str, batches: list[torch.Tensor]) -> Callable[[int], None] | None:
        """With eval_period N, during the online stream pass: a callback after each batch that
        evaluates the model every N stream samples trained on (anytime accuracy, on the test
        samples of the classes exposed so far). Stream counts: one host sync per pass."""
        period, m = self.settings.eval_period, self.method
        if phase != "stream" or period <= 0 or not batches:
            return None
        is_stream = torch.zeros(len(self.data.train_labels), dtype=torch.bool, device=self.test_idx.device)
        is_stream[m.stream] = True
        cum = torch.stack([is_stream[b].sum() for b in batches]).cumsum(0).tolist()
        start = self.stream_seen
        exposed = torch.tensor(sorted(m.exposed), device=self.test_idx.device)
        test = self.test_idx[torch.isin(self.data.test_labels[self.test_idx], exposed)]

        def after_batch(k: int) -> None:
            before, seen = start + (cum[k - 1] if k else 0), start + cum[k]
            if seen // period > before // period:
                self.anytime_point(test, seen)
                m.model.train()
            if k == len(batches) - 1:
                self.stream_seen = seen
        return after_batch
