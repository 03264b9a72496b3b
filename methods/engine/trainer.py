"""The trainer: the task loop, evaluation (and its rule), anytime points, phase timing, records and state.

A method never runs a loop itself: the trainer calls its hooks (methods.base) once each, in a
fixed order, and keeps the per-task records, the phase times and the sample counts. Its two protocols'
loops are its parts: epochs.EpochLoop (the CVPR'21 task-and-epoch calls) and sample_wise.SampleWiseLoop
(the stream in chunks: i-Blurry's sample-wise protocol, and a replaying method's epochs). The setting picks
the protocol (``Settings.sample_wise``); every method runs in both."""
from __future__ import annotations

import logging
import time
from collections import defaultdict
from typing import TYPE_CHECKING, Callable

import torch

from methods.engine.common import (PHASE_TIMER, DivergedError, FitResult, Settings, StopRun,  # noqa: F401 (re-exported)
                                   Task)
from methods.engine.epochs import EpochLoop
from methods.engine.evaluation import evaluate
from methods.engine.online_protocol import BatchStepCounter, StepCounter
from methods.engine.sample_wise import SampleWiseLoop
from utils.data.run_data import RunData
from utils.run import dist
from utils.run.tb import log_task

if TYPE_CHECKING:  # the engine knows a method by its hooks only
    from methods.base import Method

logger = logging.getLogger("rm")


class Trainer(SampleWiseLoop, EpochLoop):
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
        # the sample-wise protocol: steps earned by the samples (i-Blurry) or by the batches (Si-Blurry)
        self.counter = (BatchStepCounter if settings.per_batch_iter else StepCounter)(settings.online_iter)

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

    def begin_task(self, t: int, stream: torch.Tensor, test_idx: torch.Tensor,
                   shown: list[int] | None = None) -> None:
        self.task_id = t
        self.test_idx = test_idx
        self.last_task = t == len(self.tasks) - 1
        self.method.before_task(t, stream, test_idx, shown)

    def run_task(self, t: int) -> FitResult:
        """before_task (the task-and-epoch protocol shows every class of the task at its start, the sample-wise
        one none: each is exposed at its first sample), the sample-wise stream, the training calls with the
        memory update in its place, the evaluation, after_task; then the task's records."""
        m, s = self.method, self.settings
        stream = self.tasks[t][0]
        shown = [] if s.sample_wise else torch.unique(self.data.train_labels[stream]).tolist()
        self.begin_task(t, stream, self.eval_indices(t), shown)
        calls, epochs = m.training_calls(s.online), []
        if s.sample_wise:  # the stream call is the sample-wise stream
            epochs.append(self.sample_wise_stream(t, stream))
            calls = [c for c in calls if c[0] != "stream"]
        res, updated, phase = FitResult(best_acc=0.0), False, "stream"
        for phase, n_epoch in calls:
            if phase == "memory" and not updated:
                self.timed("memory_update", m.update_memory, t)
                updated = True
            res = self.timed(PHASE_TIMER[phase], self.fit, phase, n_epoch)
            epochs += res.epochs
        retrained = self.timed(PHASE_TIMER[phase], m.after_training, t)
        if not updated:
            self.timed("memory_update", m.update_memory, t)
        if s.sample_wise:  # one evaluation at the task end, on the exposed classes
            ev = self.evaluate(self.exposed_test())
            epochs[-1].update(test_loss=ev["avg_loss"], test_acc=ev["avg_acc"])
            res = FitResult(best_acc=ev["avg_acc"], last=ev, epochs=epochs)
        else:
            if retrained:
                ev = self.evaluate(self.test_idx)
                res = FitResult(best_acc=ev["avg_acc"], last=ev, epochs=res.epochs)
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

    # ----------------------------------------------------------------- evaluation
    def evaluate(self, test_idx: torch.Tensor) -> dict:
        """The method's test accuracy on ``test_idx`` (eval mode); its time and samples are counted."""
        m = self.method
        t0 = time.perf_counter()
        m.model.eval()
        m.before_eval()
        if self.settings.sample_wise:  # GDumb's training on the memory, BiC's bias layer: part of the evaluation's time
            self.timers["eval_training"] += time.perf_counter() - t0
        with m.autocast():
            out = evaluate(m.eval_scores, m.predict_labels, self.data.test.images, self.data.test_labels,
                           dist.shard(test_idx), self.data.n_classes, self.settings.topk,
                           reduce=dist.all_sum if dist.info().active else None, n_total=len(test_idx))
        self.eval_time += time.perf_counter() - t0
        self.samples["evaluation"] += len(test_idx)
        return out

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
