"""Rainbow Memory in the i-Blurry protocol: as the CLIB code runs it (default), or as the CVPR'21 paper intends."""
from __future__ import annotations

import logging

import torch

from methods import register
from methods.base import Method
from methods.er import ER
from methods.memory import build_manager
from methods.engine.online_protocol import StepCounter, trainable
from methods.engine.optim import make_optimizer
from utils.data.batches import shuffled_batches

logger = logging.getLogger("rm")
CLIP = 10.0  # the CLIB code clips the gradient norm in the memory epochs


@register("rm", iblurry=True)
class RMiBlurry(ER):
    """The CLIB code (default): one SGD step (constant --lr) per --batchsize stream samples, on those samples
    only; each sample then enters a memory of --memory_size - --batchsize // 2 by GDumb's rule; every new
    class re-initialises the whole head and the optimizer; the uncertainty memory is never used. The
    temporary batch runs on across task ends: a task's last, partial batch waits for the next task's
    first samples (and is neither trained nor in the memory at this task's end). At each task end,
    --n_epoch epochs on the memory (warm start, cosine warm restarts down to --lr / 100, gradient norm
    clipped at 10) in the mode the stream left the model in: the CLIB code never calls train() there,
    so when an anytime evaluation came after the task's last step (a stream that ends on a multiple of
    --eval_period), batch norm trains in eval mode, on its running statistics, which stay frozen.
    --as_intended, RM as the CVPR'21 code runs its online stream: each step takes
    --batchsize // 2 stream samples and as many memory samples (uniform); the memory stays as the last task
    end left it, and at each task end it is chosen from itself and the task's stream by RM's uncertainty
    rule (--uncert_metric) before the memory epochs (in train mode); the head grows keeping the old
    classes' rows; a task's last, partial half batch is left out of the stream pass, as the CVPR'21 code's
    loader drops it (the CLIB code's carry would be no help there: task 0's memory is empty)."""

    default_memory = "greedy_balanced"
    eval_every_epoch = False  # the memory epochs are not evaluated; the task end is
    protocol_defaults: dict = {}  # SGD, --lr and --sched_name from the dataset's preset (the CLIB scripts: sgd 0.05)

    @staticmethod
    def default_temp_batchsize(batchsize: int, as_intended: bool = False) -> int:
        """The CLIB code: --batchsize stream samples per step; the CVPR code (as intended): half a batch."""
        return max(1, batchsize // 2) if as_intended else batchsize

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.pending = torch.empty(0, dtype=torch.long, device=self.device)  # the CLIB code's temp_batch
        self.stream_end_training = True

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

    def chunk_ends(self, n: int, temp_batchsize: int) -> list[int]:
        """The CLIB code: chunks end where the temporary batch, carried over from the last task, fills."""
        if self.cfg.as_intended or not n:
            return super().chunk_ends(n, temp_batchsize)
        return list(range(temp_batchsize - len(self.pending), n, temp_batchsize)) + [n]

    def steps_due(self, counter: StepCounter, n_samples: int) -> int:
        """One step per full temporary batch, whatever --online_iter. As intended, a task's last, partial half
        batch does not train: the CVPR'21 code's stream loader drops it (it stays a memory candidate)."""
        return 1 if len(self.pending) + n_samples >= self.cfg.temp_batchsize else 0

    def replay_batch(self, temp: torch.Tensor) -> torch.Tensor:
        """The CLIB code: the temporary batch's stream samples only; as intended: with memory samples up to
        --batchsize."""
        return super().replay_batch(temp) if self.cfg.as_intended else torch.cat([self.pending, temp])

    def remember(self, temp: torch.Tensor, task_id: int) -> None:
        """The CLIB code: a full temporary batch enters the memory by GDumb's rule, a partial one waits; as
        intended, the memory changes at task ends only."""
        if self.cfg.as_intended:
            return
        batch = torch.cat([self.pending, temp])
        if len(batch) < self.cfg.temp_batchsize:
            self.pending = batch
            return
        self.pending = batch[:0]
        super().remember(batch, task_id)

    def train_mode(self, phase: str) -> bool:
        """The CLIB code's memory epochs keep the mode the stream left the model in; as intended, train mode."""
        return self.cfg.as_intended or self.stream_end_training

    def train_step(self, x, y, idx=None, extra=None):
        return Method.train_step(self, x, y, idx, extra)  # no per-step decay: the lr is constant

    def after_stream(self, task_id: int) -> None:
        """--as_intended: the memory is chosen by uncertainty from itself and the task's stream. Then a
        fresh optimizer with cosine warm restarts for the memory epochs, gradient norm clipped."""
        self.stream_end_training = self.model.training
        if not (self.cfg.as_intended or self.stream_end_training):
            logger.info("Task %d: the memory epochs run in eval mode, as the CLIB code runs them (an anytime "
                        "evaluation came after the task's last step; --as_intended trains in train mode)", task_id)
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

    def extra_state(self) -> dict:
        return {"pending": self.pending.cpu(), "model_training": self.model.training}

    def load_extra_state(self, state: dict) -> None:
        self.pending = state.get("pending", self.pending[:0].cpu()).to(self.device)
        self.model.train(state.get("model_training", True))
