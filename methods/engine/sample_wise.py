"""The stream a chunk at a time: the sample-wise protocol, one task's stream in whole temporary batches with
exposures at their exact sample positions and anytime evaluations (i-Blurry, SPEC section 12: at their exact
sample positions; Si-Blurry, section 13: after the batch that passes them), and the same chunk steps as the
epochs of a replaying method in the task-and-epoch protocol. A part of the Trainer."""
from __future__ import annotations

import math
import time
from typing import Callable

import torch

from methods.engine.common import DivergedError
from methods.engine.online_protocol import anytime_marks, first_positions


class OneStepPerChunk:
    """The task-and-epoch protocol's step rule for a replaying method: one step per chunk of new samples."""

    def add(self, n_samples: int) -> int:
        return 1 if n_samples else 0


class SampleWiseLoop:
    """The Trainer's stream of chunks (``Trainer.run_task`` calls ``sample_wise_stream`` in the sample-wise
    protocol; ``EpochLoop`` calls ``train_chunks`` for a replaying method's epochs)."""

    def train_chunks(self, order: torch.Tensor, ends: list[int], counter, events: list[tuple[int, str, int]],
                     remember: bool = True, after_chunk: Callable[[int], None] | None = None
                     ) -> tuple[torch.Tensor, torch.Tensor, int, int, int]:
        """Train on ``order`` in chunks ending at ``ends``: each chunk earns ``steps_due`` steps, each on
        ``replay_batch(chunk)``, and enters the memory (``remember``, before the steps when the method says
        so); ``events`` (position, kind, value) run after the sample at their position, then ``after_chunk(end)``
        (Si-Blurry's evaluations, ``end``: the samples of ``order`` so far). Returns the summed
        loss and correct count (on the device), samples drawn, samples scored and steps."""
        m, t = self.method, self.task_id
        imgs, labels = self.data.train.images, self.data.train_labels
        total_loss = torch.zeros((), device=m.device)
        correct = torch.zeros((), device=m.device, dtype=torch.long)
        n_seen = n_acc = n_steps = k = start = 0
        for end in ends:
            temp = order[start:end]
            while k < len(events) and (events[k][0] < end - 1 or (events[k][0] == end - 1 and events[k][1] == "grow")):
                self.stream_event(*events[k])
                k += 1
            if remember and m.remember_first:  # CLIB: a sample enters the memory before the steps it earns
                m.remember(temp, t)
            steps = m.steps_due(counter, end - start)
            if steps:  # the CLIB code sets train mode per step: a chunk with no step leaves the mode as it is
                m.model.train()
            for _ in range(steps):
                batch = m.replay_batch(temp)
                with m.autocast():
                    loss, logits, y = m.train_step(m.train_aug(imgs[batch]), labels[batch], batch, None)
                total_loss += loss.detach()
                correct += (logits.detach().argmax(1) == y).sum()
                n_seen, n_acc, n_steps = n_seen + len(batch), n_acc + len(y), n_steps + 1
            if remember and not m.remember_first:
                m.remember(temp, t)
            while k < len(events) and events[k][0] < end:
                self.stream_event(*events[k])
                k += 1
            if after_chunk is not None:
                after_chunk(end)
            start = end
        for pos, kind, value in events[k:]:  # past a dropped partial chunk: the evaluations still run
            if kind == "eval":
                self.stream_event(pos, kind, value)
        return total_loss, correct, n_seen, n_acc, n_steps

    def sample_wise_stream(self, t: int, stream: torch.Tensor) -> dict:
        """The sample-wise protocol's stream of task ``t`` (SPEC section 12), in whole temporary batches: a
        class is exposed (the head grows) at its first sample; every --eval_period samples the model is
        evaluated on the exposed classes; a full temporary batch earns int(counter) steps (``online_iter``
        per sample). Returns the stream's epoch record."""
        m = self.method
        t0, e0 = time.perf_counter(), self.eval_time
        m.before_fit("stream")
        ends = m.chunk_ends(len(stream), self.settings.temp_batchsize)
        by_batch = self.settings.eval_after_batch
        total_loss, correct, n_seen, n_acc, n_steps = self.train_chunks(
            stream, ends, self.counter, self.stream_events(stream, evals=not by_batch),
            after_chunk=self.batch_evals if by_batch else None)
        self.stream_seen += len(stream)
        self.samples["stream"] += n_seen
        self.timers["stream_pass"] += time.perf_counter() - t0 - (self.eval_time - e0)
        loss = float(total_loss) / max(n_steps, 1)
        if not math.isfinite(loss):
            raise DivergedError(t, "stream", 0, loss)
        rec = {"epoch": 0, "train_loss": loss, "train_acc": 100.0 * int(correct) / max(n_acc, 1),
               "test_loss": None, "test_acc": None, "lr": m.optimizer.param_groups[0]["lr"]}
        self.log_epoch("stream", rec)
        self.after_fit_timed("stream")
        m.after_stream(t)
        return rec

    def stream_events(self, stream: torch.Tensor, evals: bool = True) -> list[tuple[int, str, int]]:
        """(position, "grow", label) at the first sample of each class not exposed yet (labels are ranks
        in the order of appearance) and (``evals``) the evaluations of ``eval_events``."""
        labels = self.data.train_labels[stream]
        n, known = len(stream), len(self.method.exposed)
        first = first_positions(labels, int(labels.max()) + 1 if n else 1)
        events = [(int(p), "grow", c) for c, p in enumerate(first.tolist()) if c >= known and p < n]
        return sorted(events + (self.eval_events(n) if evals else []), key=lambda e: (e[0], e[1] == "eval"))

    def eval_events(self, n: int) -> list[tuple[int, str, int]]:
        """(position, "eval", samples seen) every --eval_period stream samples among the next ``n``."""
        period, seen = self.settings.eval_period, self.stream_seen
        if self.method.single_task:  # joint: one offline task, no anytime curve
            return []
        return [(q - seen - 1, "eval", q) for q in anytime_marks(seen, n, period)]

    def batch_evals(self, end: int) -> None:
        """Si-Blurry's rule, after each stream batch (``end``: this task's samples so far): one anytime point
        when the run's stream samples first exceed the next multiple of --eval_period, recorded at that
        multiple; the next point waits for the next multiple (the official trainer's counter), so a batch
        that passes two multiples gives one point and the next batch the other."""
        period = self.settings.eval_period
        if period <= 0 or self.method.single_task:
            return
        due = period * (len(self.anytime) + 1)
        if self.stream_seen + end > due:
            self.anytime_point(self.exposed_test(), due)

    def stream_event(self, pos: int, kind: str, value: int) -> None:
        if kind == "grow":
            self.method.expose([value])
            return
        self.anytime_point(self.exposed_test(), value)

    def exposed_test(self) -> torch.Tensor:
        """The test samples of the classes exposed so far."""
        exposed = torch.tensor(sorted(self.method.exposed), dtype=torch.long, device=self.test_idx.device)
        return self.test_idx[torch.isin(self.data.test_labels[self.test_idx], exposed)]
