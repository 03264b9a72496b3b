"""Rainbow Memory: half-memory batches in the stream pass, uncertainty-diverse memory, cutmix/autoaug."""
from __future__ import annotations

import torch

from methods import register
from methods.base import Method
from utils.data.batches import shuffled_batches


@register("rm")
class RainbowMemory(Method):
    """RM as the public code trains it (methods/rainbow_memory.py)."""

    default_memory = "uncertainty"

    def graph_sizes(self) -> tuple[int, ...]:
        """Whole batches: B in the stream pass, B//2 in the memory epochs."""
        return (self.cfg.batchsize, self.cfg.batchsize // 2)

    def epoch_batches(self, phase: str) -> list[torch.Tensor]:
        """Stream pass: each batch = (B - B//2) stream samples (last partial batch dropped) +
        B//2 memory samples (memory reshuffled on every cycle); with an empty memory, full
        stream batches. Memory phase: memory only, batches of B//2, last partial batch kept."""
        b = self.cfg.batchsize
        mem = self.memory.indices
        half = b // 2
        if phase == "memory":
            return shuffled_batches(mem, half, drop_last=False)
        if len(mem) == 0:
            return shuffled_batches(self.stream, b, drop_last=True)
        stream_b = shuffled_batches(self.stream, b - half, drop_last=True)
        mem_b: list[torch.Tensor] = []
        while len(mem_b) < len(stream_b):
            mem_b += shuffled_batches(mem, half, drop_last=False)
        return [torch.cat([s, m]) for s, m in zip(stream_b, mem_b)]
