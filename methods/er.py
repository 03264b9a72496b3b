"""ER (the CLIB code's er): reservoir replay, trained sample by sample in the i-Blurry protocol; the base of
every method of that protocol, as in the CLIB code.

The trainer (``Trainer.run_sample_wise_task``) calls, per temporary batch ``temp``: ``expose`` at each new
class, ``remember(temp)`` (first when ``remember_first``), ``steps_due`` steps of ``replay_batch`` ->
``train_step``, ``remember(temp)``; at the task end ``after_stream``, the ``training_calls`` (none here),
the evaluation (``before_eval`` first) and ``after_task``."""
from __future__ import annotations

import logging

import torch

from methods import register
from methods.base import Method
from methods.engine.online_protocol import StepCounter, grow_head

logger = logging.getLogger("rm")
LR_DECAY = 0.9999  # per training step; the learning rate restarts at --lr at every new class


@register("er", iblurry=True)
class ER(Method):
    """Each step trains on the temporary batch plus up to --batchsize minus its size memory samples
    (uniform, without replacement); the temporary samples then enter a reservoir memory of --memory_size
    minus --temp_batchsize. Adam (weight decay 0) is rebuilt at every new class, so its learning rate
    restarts at --lr, and decays by 0.9999 per step."""

    default_memory = "reservoir"
    sample_wise = True
    remember_first = False  # True: the temporary samples enter the memory before their steps (CLIB)
    protocol_defaults = {"opt_name": "adam", "lr": 3e-4}  # the CLIB scripts' optimiser, unless given

    @staticmethod
    def default_temp_batchsize(batchsize: int, as_intended: bool = False) -> int:
        """--temp_batchsize when not given: half the batch (the CLIB code)."""
        return max(1, batchsize // 2)

    def __init__(self, cfg, data, device, writer=None) -> None:
        super().__init__(cfg, data, device, writer)
        self.replace_head(1)  # a linear head with one output, grown per exposed class
        self.exposed = set()

    def memory_size(self) -> int:
        return max(self.cfg.memory_size - self.cfg.temp_batchsize, 0)

    def build_optimizer(self) -> None:
        self.optimizer = torch.optim.Adam(self.model.parameters(), lr=self.cfg.lr, weight_decay=0.0, fused=True)
        self.scheduler = None

    def before_task(self, task_id: int, stream: torch.Tensor, test_idx: torch.Tensor) -> None:
        """The stream keeps the split's order; the head grows with the classes, not with the task."""
        self.stream = stream
        if self.optimizer is None:
            self.build_optimizer()
        logger.info("Task %d: %d stream samples, %d memory, head %d outputs (%d classes exposed)", task_id,
                    len(stream), len(self.memory), self.n_out, len(self.exposed))

    def expose(self, n_classes: int) -> None:
        """Classes up to label ``n_classes - 1`` are exposed: grow the head (old rows kept, every bias
        re-initialised) and restart the optimizer at --lr."""
        if n_classes > self.n_out or not self.exposed:  # the first class re-initialises the one-output head too
            self.model.fc = grow_head(self.model.fc, max(n_classes, self.n_out))
        self.head = "linear"
        self.exposed |= set(range(n_classes))
        self.num_learning_class = len(self.exposed)
        self.build_optimizer()

    def replay_batch(self, temp: torch.Tensor) -> torch.Tensor:
        """The temporary samples, then up to --batchsize - len(temp) memory samples drawn uniformly."""
        mem = self.memory.indices
        k = min(self.cfg.batchsize - len(temp), len(mem))
        if k <= 0:
            return temp
        return torch.cat([temp, mem[torch.randperm(len(mem), device=mem.device)[:k]]])

    def train_step(self, x: torch.Tensor, y: torch.Tensor, idx: torch.Tensor | None = None,
                   extra: dict[str, torch.Tensor] | None = None):
        out = super().train_step(x, y, idx, extra)
        for g in self.optimizer.param_groups:
            g["lr"] *= LR_DECAY
        return out

    def remember(self, temp: torch.Tensor, task_id: int) -> None:
        """The temporary samples enter the reservoir."""
        self.memory.update(temp, task_id, self.n_out)

    def chunk_ends(self, n: int, temp_batchsize: int) -> list[int]:
        """Ends of the trainer's chunks of this task's ``n`` stream samples: every --temp_batchsize samples
        (BiC ends a chunk where its temporary batch fills, its held-out samples skipped)."""
        return list(range(temp_batchsize, n, temp_batchsize)) + [n] if n else []

    def steps_due(self, counter: StepCounter, n_samples: int) -> int:
        """Training steps the ``n_samples`` of a full temporary batch earn: ``online_iter`` each."""
        return counter.add(n_samples)

    def training_calls(self, online: bool) -> list[tuple[str, int]]:
        """Training calls at the task end, after the stream (none: everything trains in the stream)."""
        return []

    def after_stream(self, task_id: int) -> None:
        """After the task's stream, before its training calls and its evaluation."""
