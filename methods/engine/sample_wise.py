"""The sample-wise protocol of i-Blurry (CLIB; SPEC section 12): one task's stream in whole temporary batches,
exposures and anytime evaluations at their exact sample positions. A part of the Trainer."""
from __future__ import annotations

import math
import time

import torch

from methods.engine.common import PHASE_TIMER, DivergedError, FitResult
from methods.engine.online_protocol import first_positions


class SampleWiseLoop:
    """The Trainer's sample-wise task (``Trainer.run_task`` calls it for a method with ``sample_wise``)."""

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
