"""The trainer: the task loop, the epoch loop, evaluation (and its rule), anytime evaluation, phase timing.

A method never runs a loop itself: the trainer calls its hooks (methods.base) once each, in a
fixed order, and keeps the per-task records, the phase times and the sample counts."""
from __future__ import annotations

import argparse
import logging
import math
import sys
import time
from collections import defaultdict
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Callable

import torch
from tqdm import tqdm

from methods.engine.evaluation import evaluate
from methods.engine.online_protocol import StepCounter, first_positions
from methods.engine.optim import warm_start_lr
from utils.data.batches import aug_spans
from utils.data.folder import read_ahead
from utils.data.run_data import RunData
from utils.run import dist
from utils.run.tb import log_task

if TYPE_CHECKING:  # the engine knows a method by its hooks only
    from methods.base import Method

logger = logging.getLogger("rm")

Task = tuple[torch.Tensor, torch.Tensor]  # (training indices, test indices) of one task
PHASE_TIMER = {"stream": "stream_pass", "memory": "memory_epochs", "offline": "offline_epochs"}


class StopRun(Exception):
    """A run that cannot go on: the checkpoint of the tasks before ``task_id`` is kept, and the log gives
    the message and ``advice``."""

    advice = ""

    def __init__(self, task_id: int, message: str) -> None:
        super().__init__(message)
        self.task_id = task_id


class DivergedError(StopRun):
    """The training loss became NaN or infinite."""

    advice = "Lower --lr (or check the data) and start the run again."

    def __init__(self, task_id: int, phase: str, epoch: int, loss: float) -> None:
        super().__init__(task_id, f"training diverged: loss {loss} in task {task_id}, {phase} epoch {epoch + 1}")


@dataclass
class FitResult:
    """One training call: best test accuracy over its epochs and the last evaluation."""

    best_acc: float
    last: dict = field(default_factory=dict)
    epochs: list[dict] = field(default_factory=list)


@dataclass(frozen=True)
class Settings:
    """What the trainer needs of the configuration."""

    online: bool
    disjoint: bool  # evaluate on the tasks so far (else on every task's test data)
    lr: float
    topk: int = 1
    eval_epochs: str = "all"  # "all" or "last_task"
    eval_period: int = 0  # anytime evaluation every N stream samples (0: off)
    online_iter: float = 1.0  # i-Blurry protocol: steps per stream sample
    temp_batchsize: int = 0  # i-Blurry protocol: stream samples gathered before they train

    @classmethod
    def from_config(cls, cfg: argparse.Namespace) -> "Settings":
        return cls(online=cfg.stream_env == "online", disjoint=cfg.exp_name == "disjoint", lr=cfg.lr, topk=cfg.topk,
                   eval_epochs=cfg.eval_epochs, eval_period=cfg.eval_period or 0,
                   online_iter=getattr(cfg, "online_iter", None) or 1.0,
                   temp_batchsize=getattr(cfg, "temp_batchsize", None) or 0)


def own_rows(sizes: list[int], device: torch.device) -> torch.Tensor:
    """Positions, in a chunk of consecutive batches of ``sizes``, of this rank's share of each batch."""
    starts = [sum(sizes[:n]) for n in range(len(sizes))]
    return torch.cat([dist.shard(torch.arange(o, o + s, device=device)) for o, s in zip(starts, sizes)])


class Trainer:
    """Runs ``method`` over ``tasks``; ``writer`` (TensorBoard, optional) gets per-epoch scalars."""

    def __init__(self, method: Method, data: RunData, tasks: list[Task], settings: Settings, writer=None) -> None:
        self.method = method
        self.data = data
        self.tasks = tasks
        self.settings = settings
        self.writer = writer
        self.rec: dict[str, list] = defaultdict(list)  # per-task records
        self.timers: dict[str, float] = defaultdict(float)  # seconds per phase, evaluation excluded
        self.samples: dict[str, int] = defaultdict(int)  # samples per phase
        self.eval_time = 0.0
        self.anytime: list[dict] = []  # {"task", "samples", "acc"} every eval_period stream samples
        self.stream_seen = 0  # stream samples trained on so far (anytime evaluation)
        self.task_id = 0
        self.test_idx = torch.empty(0, dtype=torch.long, device=data.train_labels.device)
        self.last_task = True
        self.counter = StepCounter(settings.online_iter)  # i-Blurry protocol: steps earned by the samples

    # ----------------------------------------------------------------- tasks
    def eval_indices(self, t: int) -> torch.Tensor:
        """blurry: the test sets of all tasks; disjoint: tasks 0..t."""
        upto = t + 1 if self.settings.disjoint else len(self.tasks)
        return torch.cat([self.tasks[i][1] for i in range(upto)])

    def run(self, first_task: int = 0, on_task_done: Callable[[int], None] | None = None) -> dict:
        """Every task from ``first_task`` on; ``on_task_done(t)`` after each (the checkpoint). Returns
        the records: per-task accuracies, memory class counts, phase times and sample counts."""
        for t in range(first_task, len(self.tasks)):
            self.run_task(t)
            if on_task_done is not None:
                on_task_done(t)
        g = self.method.graph
        if g is not None:
            logger.info("Compiled step: %s", g.report())
        return {**self.rec, "phase_time_s": {**self.timers, "evaluation": self.eval_time},
                "phase_samples": {**self.samples, **self.method.samples}}

    def begin_task(self, t: int, stream: torch.Tensor, test_idx: torch.Tensor) -> None:
        self.task_id = t
        self.test_idx = test_idx
        self.last_task = t == len(self.tasks) - 1
        self.method.before_task(t, stream, test_idx)

    def run_task(self, t: int) -> FitResult:
        """before_task, the training calls with the memory update in its place, the evaluation,
        after_task; then the task's records."""
        m = self.method
        if m.sample_wise:
            return self.run_sample_wise_task(t)
        self.begin_task(t, self.tasks[t][0], self.eval_indices(t))
        res, updated = FitResult(best_acc=0.0), False
        for phase, n_epoch in m.training_calls(self.settings.online):
            if phase == "memory" and not updated:
                self.timed("memory_update", m.update_memory, t)
                updated = True
            res = self.timed(PHASE_TIMER[phase], self.fit, phase, n_epoch)
        if self.timed(PHASE_TIMER[phase], m.after_training, t):
            ev = self.evaluate(self.test_idx)
            res = FitResult(best_acc=ev["avg_acc"], last=ev, epochs=res.epochs)
        if not updated:
            self.timed("memory_update", m.update_memory, t)
        if not m.eval_every_epoch:
            res = self.evaluate_at_end(phase, res)
        if m.task_acc_is_final:
            res.best_acc = res.last["avg_acc"]
        m.after_task(t)
        self.record(t, res)
        return res

    def timed(self, phase: str, fn: Callable, *args):
        """Run a hook; its time, less the evaluation and the importance pass inside it, goes to ``phase``."""
        e0, h0, t0 = self.eval_time, self.timers.get("importance", 0.0), time.perf_counter()
        out = fn(*args)
        inner = (self.eval_time - e0) + (self.timers.get("importance", 0.0) - h0)
        self.timers[phase] += time.perf_counter() - t0 - inner
        return out

    def record(self, t: int, res: FitResult) -> None:
        m, rec = self.method, self.rec
        counts = m.memory.class_counts(self.data.n_classes)
        rec["task_acc"].append(res.best_acc)
        rec["task_acc_final"].append(res.last["avg_acc"])
        rec["cls_acc"].append(res.last["cls_acc"])
        rec["epochs"].append(res.epochs)
        rec["memory_class_counts"].append(counts)
        logger.info("Task %d done: task_acc (best epoch) %.2f | final model %.2f", t, res.best_acc,
                    res.last["avg_acc"])
        if self.writer is not None:
            self.writer.add_scalar("Metrics/TaskAcc", res.best_acc, t)
            self.writer.add_scalar("Metrics/TaskAccFinal", res.last["avg_acc"], t)
            for c, a in enumerate(res.last["cls_acc"]):
                if a is not None:
                    self.writer.add_scalar(f"ClassAcc/class_{c}", a, t)
            log_task(self.writer, t, rec["cls_acc"], self.data.task_classes, self.data.train.images,
                     self.data.train_labels, m.memory.indices, self.data.n_classes)

    # ----------------------------------------------------------------- the i-Blurry protocol
    def run_sample_wise_task(self, t: int) -> FitResult:
        """One task of the sample-wise protocol (SPEC section 12), in whole temporary batches: a class is
        exposed (the head grows) at its first sample; every --eval_period samples the model is evaluated
        on the exposed classes; a full temporary batch earns int(counter) steps (``online_iter`` per
        sample), each on the temporary samples plus memory samples (``replay_batch``), then enters the
        memory. Exposures and evaluations are handled at their exact positions, a few per batch."""
        m, s = self.method, self.settings
        stream = self.tasks[t][0]
        self.begin_task(t, stream, self.eval_indices(t))
        events = self.stream_events(stream)
        imgs, labels = self.data.train.images, self.data.train_labels
        total_loss = torch.zeros((), device=m.device)
        correct = torch.zeros((), device=m.device, dtype=torch.long)
        n_seen = n_acc = n_steps = k = 0  # samples drawn; samples of the returned logits (train_acc); steps
        t0, e0 = time.perf_counter(), self.eval_time
        start = 0
        for end in m.chunk_ends(len(stream), s.temp_batchsize):
            temp = stream[start:end]
            while k < len(events) and (events[k][0] < end - 1 or (events[k][0] == end - 1 and events[k][1] == "grow")):
                self.stream_event(*events[k])
                k += 1
            if m.remember_first:  # CLIB: a sample enters the memory before the steps it earns
                m.remember(temp, t)
            steps = m.steps_due(self.counter, end - start)
            if steps:  # the CLIB code sets train mode per step: a chunk with no step leaves the mode as it is
                m.model.train()
            for _ in range(steps):
                batch = m.replay_batch(temp)
                with m.autocast():
                    loss, logits, y = m.train_step(m.train_aug(imgs[batch]), labels[batch], batch, None)
                total_loss += loss.detach()
                correct += (logits.detach().argmax(1) == y).sum()
                n_seen, n_acc, n_steps = n_seen + len(batch), n_acc + len(y), n_steps + 1
            if not m.remember_first:
                m.remember(temp, t)
            while k < len(events) and events[k][0] < end:
                self.stream_event(*events[k])
                k += 1
            start = end
        self.stream_seen += len(stream)
        self.samples["stream"] += n_seen
        self.timers["stream_pass"] += time.perf_counter() - t0 - (self.eval_time - e0)
        loss = float(total_loss) / max(n_steps, 1)
        if not math.isfinite(loss):
            raise DivergedError(t, "stream", 0, loss)
        rec = {"epoch": 0, "train_loss": loss, "train_acc": 100.0 * int(correct) / max(n_acc, 1),
               "test_loss": None, "test_acc": None, "lr": m.optimizer.param_groups[0]["lr"]}
        epochs = [rec]
        self.log_epoch("stream", rec)
        m.after_stream(t)
        for phase, n_epoch in m.training_calls(True):  # RM: epochs on the memory at the task end
            epochs += self.timed(PHASE_TIMER[phase], self.fit, phase, n_epoch).epochs
        ev = self.evaluate(self.exposed_test())
        epochs[-1].update(test_loss=ev["avg_loss"], test_acc=ev["avg_acc"])
        res = FitResult(best_acc=ev["avg_acc"], last=ev, epochs=epochs)
        m.after_task(t)
        self.record(t, res)
        return res

    def stream_events(self, stream: torch.Tensor) -> list[tuple[int, str, int]]:
        """(position, "grow", label) at the first sample of each class not exposed yet (labels are ranks
        in the order of appearance) and (position, "eval", samples seen) every --eval_period samples."""
        labels = self.data.train_labels[stream]
        n, known = len(stream), len(self.method.exposed)
        first = first_positions(labels, int(labels.max()) + 1 if n else 1)
        events = [(int(p), "grow", c) for c, p in enumerate(first.tolist()) if c >= known and p < n]
        period = self.settings.eval_period
        if period > 0:
            seen = self.stream_seen
            events += [(q - seen - 1, "eval", q) for q in range((seen // period + 1) * period, seen + n + 1, period)]
        return sorted(events, key=lambda e: (e[0], e[1] == "eval"))

    def stream_event(self, pos: int, kind: str, value: int) -> None:
        m = self.method
        if kind == "grow":
            m.expose(value + 1)
            return
        self.anytime_point(self.exposed_test(), value)

    def exposed_test(self) -> torch.Tensor:
        """The test samples of the classes exposed so far (their labels are below the exposed count)."""
        return self.test_idx[self.data.test_labels[self.test_idx] < len(self.method.exposed)]

    # ----------------------------------------------------------------- training calls
    def fit(self, phase: str, n_epoch: int) -> FitResult:
        """One training call: ``n_epoch`` epochs, each evaluated when the rule says so."""
        m = self.method
        res = FitResult(best_acc=0.0)
        m.before_fit(phase)
        for epoch in range(n_epoch):
            rec = self.train_epoch(phase, epoch)
            if m.eval_every_epoch and self.evaluates_epoch(epoch, n_epoch):
                ev = self.evaluate(self.test_idx)
                rec.update(test_loss=ev["avg_loss"], test_acc=ev["avg_acc"])
                res.best_acc = max(res.best_acc, ev["avg_acc"])
                res.last = ev
            res.epochs.append(rec)
            self.log_epoch(phase, rec)
        t0 = time.perf_counter()
        m.after_fit(self.task_id, phase)
        dt = time.perf_counter() - t0
        if m.after_fit_timer:  # EWC/RWalk's importance: its own phase
            self.timers[m.after_fit_timer] += dt
        return res

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
        lr = warm_start_lr(m.optimizer, m.scheduler, self.settings.lr, epoch)
        batches = m.epoch_batches(phase)
        self.samples[phase] += sum(len(b) for b in batches)
        loss, acc = self.run_epoch(phase, epoch, batches)
        return {"epoch": epoch, "train_loss": loss, "train_acc": acc, "test_loss": None, "test_acc": None, "lr": lr}

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

    # ----------------------------------------------------------------- evaluation
    def evaluate(self, test_idx: torch.Tensor) -> dict:
        """The method's test accuracy on ``test_idx`` (eval mode); its time and samples are counted."""
        m = self.method
        t0 = time.perf_counter()
        m.model.eval()
        m.before_eval()
        if m.sample_wise:  # GDumb's training on the memory, BiC's bias layer: part of the evaluation's time
            self.timers["eval_training"] += time.perf_counter() - t0
        with m.autocast():
            out = evaluate(m.eval_scores, m.predict_labels, self.data.test.images, self.data.test_labels,
                           dist.shard(test_idx), self.data.n_classes, self.settings.topk,
                           reduce=dist.all_sum if dist.info().active else None, n_total=len(test_idx))
        self.eval_time += time.perf_counter() - t0
        self.samples["evaluation"] += len(test_idx)
        return out

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

    def anytime_point(self, test: torch.Tensor, seen: int) -> None:
        """One point of the anytime curve: the accuracy on ``test`` after ``seen`` stream samples."""
        acc = self.evaluate(test)["avg_acc"]
        self.anytime.append({"task": self.task_id, "samples": seen, "acc": acc})
        if self.writer is not None:
            self.writer.add_scalar("Metrics/AnytimeAcc", acc, seen)

    # ----------------------------------------------------------------- logs
    def log_epoch(self, phase: str, rec: dict, when: str = "") -> None:
        t = self.task_id
        head = f"Task {t} | {phase} | Epoch {rec['epoch'] + 1}" + (f" ({when})" if when else "")
        if rec["test_acc"] is None:
            keys = ("train_loss", "train_acc", "lr")
            logger.info("%s | train_loss %.4f | train_acc %.2f | lr %.5f (no evaluation)", head, rec["train_loss"],
                        rec["train_acc"], rec["lr"])
        else:
            keys = ("train_loss", "train_acc", "test_loss", "test_acc", "lr")
            logger.info("%s | train_loss %.4f | train_acc %.2f | test_loss %.4f | test_acc %.2f | lr %.5f", head,
                        rec["train_loss"], rec["train_acc"], rec["test_loss"], rec["test_acc"], rec["lr"])
        if self.writer is not None:
            for k in keys if not when else ("test_loss", "test_acc"):
                group, _, name = k.partition("_")
                self.writer.add_scalar(f"task{t}/{phase}/{group}/{name}", rec[k], rec["epoch"])

    # ----------------------------------------------------------------- state
    def state_dict(self) -> dict:
        """The records and counters so far, as data."""
        return {"rec": dict(self.rec), "timers": dict(self.timers), "samples": dict(self.samples),
                "eval_time": self.eval_time, "anytime": list(self.anytime), "stream_seen": self.stream_seen,
                "counter": self.counter.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        self.rec = defaultdict(list, state["rec"])
        self.timers = defaultdict(float, state["timers"])
        self.samples = defaultdict(int, state["samples"])
        self.eval_time = state["eval_time"]
        self.anytime = list(state["anytime"])
        self.stream_seen = state["stream_seen"]
        if "counter" in state:
            self.counter.load_state_dict(state["counter"])
