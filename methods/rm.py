"""Rainbow Memory (Bang et al., CVPR 2021): uncertainty-diverse memory, half-memory batches, memory epochs."""
from __future__ import annotations

import logging

import torch

from methods import register
from methods.base import Method
from methods.engine.online_protocol import StepCounter, trainable
from methods.engine.optim import make_optimizer
from methods.er import grow_exposed
from methods.memory import build_manager
from utils.data.batches import shuffled_batches

logger = logging.getLogger("rm")
CLIP = 10.0  # the CLIB code clips the gradient norm in the memory epochs


@register("rm")
class RainbowMemory(Method):
    """Task and epochs (the CVPR'21 code): online, a stream pass of batches half stream, half memory, the
    memory chosen at the task end by the uncertainty of --uncert_metric views, then --n_epoch epochs on it;
    offline, epochs on stream + memory.

    Sample-wise, as the CLIB code runs it (i-Blurry's default): one SGD step (constant --lr) per --batchsize
    stream samples, on those samples only; each sample then enters a memory of --memory_size - --batchsize // 2
    by GDumb's rule; every new class re-initialises the whole head and the optimizer; the uncertainty memory
    is never used. The temporary batch runs on across task ends. At each task end, --n_epoch epochs on the
    memory (warm start, cosine warm restarts down to --lr / 100, gradient norm clipped at 10) in the mode the
    stream left the model in (the CLIB code never calls train() there).
    Sample-wise as the paper intends (--as_intended, and settings no public code runs): each step takes
    --batchsize // 2 stream samples and as many memory samples (uniform); the memory changes at task ends
    only, chosen from itself and the task's stream by RM's uncertainty rule before the memory epochs (in
    train mode); the head grows keeping the old classes' rows; a task's last partial half batch is left out
    of the stream, as the CVPR'21 code's loader drops it."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.pending = torch.empty(0, dtype=torch.long, device=self.device)  # the CLIB code's temp_batch
        self.stream_end_training = True
        if self.follow != "cvpr21":  # the sample-wise head: one linear output, grown per exposed class
            self.replace_head(1)
            self.exposed = set()

    @property
    def default_memory(self) -> str:
        return "uncertainty" if self.follow == "cvpr21" else "greedy_balanced"

    @staticmethod
    def default_temp_batchsize(batchsize: int, follow: str) -> int:
        """The CLIB code: --batchsize stream samples per step; as intended: half a batch."""
        return batchsize if follow == "clib" else max(1, batchsize // 2)

    def memory_size(self) -> int:
        """The CVPR'21 code: --memory_size; sample-wise (the CLIB code's) less half a batch."""
        if self.follow == "cvpr21":
            return self.cfg.memory_size
        return max(self.cfg.memory_size - max(1, self.cfg.batchsize // 2), 0)

    def graph_sizes(self) -> tuple[int, ...]:
        """Whole batches: B in the stream pass, B//2 in the memory epochs."""
        return (self.cfg.batchsize, self.cfg.batchsize // 2)

    def build_optimizer(self) -> None:
        self.optimizer, self.scheduler = make_optimizer(self.cfg.opt_name, self.cfg.lr, self.model, self.cfg.sched_name)
        self.grad_clip = None

    # ----------------------------------------------------------------- task and epochs
    def before_task(self, task_id: int, stream: torch.Tensor, test_idx: torch.Tensor,
                    shown: list[int] | None = None) -> None:
        if self.follow == "cvpr21":
            return super().before_task(task_id, stream, test_idx, shown)
        self.stream = stream  # sample-wise: the stream keeps its order and a fresh optimizer at a constant lr
        self.build_optimizer()
        logger.info("Task %d: %d stream samples, %d memory, head %d outputs (%d classes exposed)", task_id,
                    len(stream), len(self.memory), self.n_out, len(self.exposed))

    def epoch_batches(self, phase: str) -> list[torch.Tensor]:
        """Stream pass: each batch = (B - B//2) stream samples (last partial batch dropped) + B//2 memory
        samples (memory reshuffled on every cycle); with an empty memory, full stream batches. Memory phase:
        memory only, batches of B//2, last partial batch kept (sample-wise: batches of B, as the CLIB code)."""
        b = self.cfg.batchsize
        mem = self.memory.indices
        half = b // 2
        if phase == "memory":
            if self.follow != "cvpr21":
                return trainable(shuffled_batches(mem, b, drop_last=False), self.model)
            return shuffled_batches(mem, half, drop_last=False)
        if len(mem) == 0:
            return shuffled_batches(self.stream, b, drop_last=True)
        stream_b = shuffled_batches(self.stream, b - half, drop_last=True)
        mem_b: list[torch.Tensor] = []
        while len(mem_b) < len(stream_b):
            mem_b += shuffled_batches(mem, half, drop_last=False)
        return [torch.cat([s, m]) for s, m in zip(stream_b, mem_b)]

    def update_memory(self, task_id: int) -> None:
        """The CVPR'21 code: by uncertainty at the task end; sample-wise the memory moved already."""
        if self.follow == "cvpr21":
            super().update_memory(task_id)

    def train_mode(self, phase: str) -> bool:
        """The CLIB code's memory epochs keep the mode the stream left the model in; else train mode."""
        return self.follow != "clib" or self.stream_end_training

    # ----------------------------------------------------------------- sample-wise
    def expose(self, labels: list[int]) -> None:
        if self.follow == "clib":  # a fresh head for every new class
            self.replace_head(max(labels) + 1)
            self.exposed |= set(labels)
            self.num_learning_class = len(self.exposed)
        else:
            grow_exposed(self, labels)  # old rows kept
        self.build_optimizer()

    def chunk_ends(self, n: int, temp_batchsize: int) -> list[int]:
        """The CLIB code: chunks end where the temporary batch, carried over from the last task, fills."""
        if self.follow != "clib" or not n:
            return super().chunk_ends(n, temp_batchsize)
        return list(range(temp_batchsize - len(self.pending), n, temp_batchsize)) + [n]

    def steps_due(self, counter: StepCounter, n_samples: int) -> int:
        """One step per full temporary batch, whatever --online_iter. As intended, a task's last, partial half
        batch does not train: the CVPR'21 code's stream loader drops it (it stays a memory candidate)."""
        return 1 if len(self.pending) + n_samples >= self.cfg.temp_batchsize else 0

    def replay_batch(self, temp: torch.Tensor) -> torch.Tensor:
        """The CLIB code: the temporary batch's stream samples only; as intended: memory samples up to B."""
        return torch.cat([self.pending, temp]) if self.follow == "clib" else super().replay_batch(temp)

    def remember(self, temp: torch.Tensor, task_id: int) -> None:
        """The CLIB code: a full temporary batch enters the memory by GDumb's rule, a partial one waits; as
        intended, the memory changes at task ends only."""
        if self.follow != "clib":
            return
        batch = torch.cat([self.pending, temp])
        if len(batch) < self.cfg.temp_batchsize:
            self.pending = batch
            return
        self.pending = batch[:0]
        self.memory.update(batch, task_id, self.n_out)

    def after_stream(self, task_id: int) -> None:
        """As intended: the memory is chosen by uncertainty from itself and the task's stream. Then a fresh
        optimizer with cosine warm restarts for the memory epochs, gradient norm clipped."""
        self.stream_end_training = self.model.training
        if not (self.follow != "clib" or self.stream_end_training):
            logger.info("Task %d: the memory epochs run in eval mode, as the CLIB code runs them (an anytime "
                        "evaluation came after the task's last step; --as_intended trains in train mode)", task_id)
        if self.follow != "clib":
            sel = build_manager("uncertainty", self.memory_size(), self.data.train_labels)
            mem = self.memory.indices
            sel.indices = mem[~torch.isin(mem, self.stream)]  # this task's samples are candidates once
            sel.update(self.stream, task_id, len(self.exposed), self.uncertainty)
            self.memory.indices = sel.indices
            logger.info("Memory (uncertainty, %s) after task %d: %d samples, per class %s", self.cfg.uncert_metric,
                        task_id, len(self.memory), self.memory.class_counts(self.data.n_classes))
        self.build_optimizer()
        self.grad_clip = CLIP

    def extra_state(self) -> dict:
        return {"pending": self.pending.cpu(), "model_training": self.model.training}

    def load_extra_state(self, state: dict) -> None:
        self.pending = state.get("pending", self.pending[:0].cpu()).to(self.device)
        self.model.train(state.get("model_training", True))
