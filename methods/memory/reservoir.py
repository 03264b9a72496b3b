"""Reservoir sampling over the stream, vectorised, as the public code draws it (j ~ U[0, seen))."""
from __future__ import annotations

import torch

from methods.memory.base import MemoryManager, register_manager


@register_manager("reservoir")
class ReservoirMemory(MemoryManager):
    """Reservoir sampling over the stream, as the public code does it (j ~ U[0, seen))."""

    def select(self, stream, cand, task_id, num_class, scorer):
        mem = self.indices
        dev = stream.device
        n_fill = min(max(self.size - len(mem), 0), len(stream))
        mem = torch.cat([mem, stream[:n_fill]])
        seen = self.seen + n_fill
        rest = stream[n_fill:]
        if len(rest):
            seen_at = seen + torch.arange(len(rest), device=dev, dtype=torch.float64)
            j = self.draw_slots(seen_at)
            hit = j < self.size
            # the last stream sample that drew slot s wins it (sequential semantics)
            pos = torch.arange(len(rest), device=dev)
            owner = torch.full((self.size,), -1, dtype=torch.long, device=dev)
            owner.scatter_reduce_(0, j[hit], pos[hit], reduce="amax")
            won = owner >= 0
            mem = mem.clone()
            mem[won] = rest[owner[won]]
        self.seen = seen + len(rest)
        return mem

    def draw_slots(self, seen_at: torch.Tensor) -> torch.Tensor:
        """j_i ~ U{0, ..., seen_i - 1} for the i-th stream sample past the filling phase."""
        return torch.floor(torch.rand(len(seen_at), device=seen_at.device, dtype=torch.float64) * seen_at).long()

    def update(self, stream, task_id, num_class, scorer=None, featurizer=None):
        cand_len = len(stream) + len(self.indices)
        if cand_len <= self.size:
            self.indices = torch.cat([stream, self.indices])
            self.seen = cand_len
            return
        self.indices = self.select(stream, None, task_id, num_class, scorer)
