"""Rainbow Memory in the i-Blurry protocol: as the CLIB code runs it (default), or as the CVPR'21 paper intends."""
from __future__ import annotations

import logging

import torch

from methods import register
from methods.base import Method
from methods.er import ER
from methods.memory import build_manager
from methods.online_protocol import StepCounter, trainable
from methods.optim import make_optimizer
from utils.data.batches import shuffled_batches

logger = logging.getLogger("rm")
CLIP = 10.0  # the CLIB code clips the gradient norm in the memory epochs


@register("rm", iblurry=True)
class RMiBlurry(ER):
    """The CLIB code (default): one SGD step (constant --lr) per --batchsize stream samples, on those samples
    only; each sample then enters a memory of --memory_size - --batchsize // 2 by GDumb's rule; every new
    class re-initialises the whole head and the optimizer; the uncertainty memory is never used. At each
    task end, --n_epoch epochs on the memory (warm start, cosine warm restarts down to --lr / 100, gradient
    norm clipped at 10). --as_intended, RM as the CVPR'21 code runs its online stream: each step takes
    --batchsize // 2 stream samples and as many memory samples (uniform); the memory stays as the last task
    end left it, and at each task end it is chosen from itself and the task's stream by RM's uncertainty
    rule (--uncert_metric) before the memory epochs; the head grows keeping the old classes' rows."""

    default_memory = "greedy_balanced"
    eval_every_epoch = False  # the memory epochs are not evaluated; the task end is
    protocol_defaults: dict = {}  # SGD, --lr and --sched_name from the dataset's preset (the CLIB scripts: sgd 0.05)

    @staticmethod
    def default_temp_batchsize(batchsize: int, as_intended: bool = False) -> int:
        """The CLIB code: --batchsize stream samples per step; the CVPR code (as intended): half a batch."""
        return max(1, batchsize // 2) if as_intended else batchsize

    def memory_size(self) -> int:
        return max(self.cfg.memory_size - max(1, self.cfg.batchsize // 2), 0)

    def build_optimizer(self) -> None:
        self.optimizer, self.scheduler = make_optimizer(self.cfg.opt_name, self.cfg.lr, self.model, self.cfg.sched_name)
        self.grad_clip = None

    def before_task(self, task_id: int, stream: torch.Tensor, test_idx: torch.Tensor) -> None:
        super().before_task(task_id, stream, test_idx)
        self.build_optimizer()  # the CLIB code's online_before_task: a fresh optimizer at a constant lr

    def expose(self, n_classes: int) -> None:
        if self.cfg.as_intended:
            super().expose(n_classes)  # old rows kept
            return
        self.replace_head(n_classes)  # a fresh head for every new class
        self.exposed |= set(range(n_classes))
        self.num_learning_class = len(self.exposed)
        self.build_optimizer()

    def steps_due(self, counter: StepCounter, n_samples: int) -> int:
        return 1  # one step per temporary batch of --batchsize samples, whatever --online_iter

    def replay_batch(self, temp: torch.Tensor) -> torch.Tensor:
        """The CLIB code: the stream samples only; as intended: with memory samples up to --batchsize."""
        return super().replay_batch(temp) if self.cfg.as_intended else temp

    def remember(self, temp: torch.Tensor, task_id: int) -> None:
        """The CLIB code: GDumb's rule per sample; as intended, the memory changes at task ends only."""
        if not self.cfg.as_intended:
            super().remember(temp, task_id)

    def train_step(self, x, y, idx=None, extra=None):
        return Method.train_step(self, x, y, idx, extra)  # no per-step decay: the lr is constant

    def after_stream(self, task_id: int) -> None:
        """--as_intended: the memory is chosen by uncertainty from itself and the task's stream. Then a
        fresh optimizer with cosine warm restarts for the memory epochs, gradient norm clipped."""
        if self.cfg.as_intended:
            sel = build_manager("uncertainty", self.memory_size(), self.data.train_labels)
            mem = self.memory.indices
            sel.indices = mem[~torch.isin(mem, self.stream)]  # this task's samples are candidates once
            sel.update(self.stream, task_id, len(self.exposed), self.uncertainty)
            self.memory.indices = sel.indices
            logger.info("Memory (uncertainty, %s) after task %d: %d samples, per class %s", self.cfg.uncert_metric,
                        task_id, len(self.memory), self.memory.class_counts(self.data.n_classes))
        self.build_optimizer()
        self.grad_clip = CLIP

    def training_calls(self, online: bool) -> list[tuple[str, int]]:
        return [("memory", self.cfg.n_epoch)]

    def epoch_batches(self, phase: str) -> list[torch.Tensor]:
        return trainable(shuffled_batches(self.memory.indices, self.cfg.batchsize, drop_last=False), self.model)
