"""Episodic memory managers: given candidate indices (and a scorer when needed), keep a subset."""
from __future__ import annotations

from typing import Callable, Optional

import torch

Scorer = Callable[[torch.Tensor], torch.Tensor]  # candidate indices -> uncertainty per candidate

MANAGERS: dict[str, type["MemoryManager"]] = {}


def register_manager(name: str):
    def deco(cls):
        MANAGERS[name] = cls
        cls.name = name
        return cls
    return deco


def build_manager(name: str, size: int, labels: torch.Tensor) -> "MemoryManager":
    """Memory manager by name; unknown names list the valid ones."""
    if name not in MANAGERS:
        raise ValueError(f"unknown memory manager '{name}'; valid: {', '.join(sorted(MANAGERS))}")
    return MANAGERS[name](size, labels)


def _perm(n: int, device: torch.device) -> torch.Tensor:
    return torch.randperm(n, device=device)


def class_balanced_random(cand: torch.Tensor, labels: torch.Tensor, size: int, num_class: int) -> torch.Tensor:
    """Up to size // num_class random samples of each class 0..num_class-1, then random fill."""
    per = size // num_class
    y = labels[cand]
    shuffled = cand[_perm(len(cand), cand.device)]
    ys = labels[shuffled]
    # rank of each sample within its class in the shuffled order (vectorised)
    order = torch.argsort(ys, stable=True)
    sorted_y = ys[order]
    first = torch.searchsorted(sorted_y, sorted_y, right=False)
    rank = torch.empty_like(order)
    rank[order] = torch.arange(len(order), device=cand.device) - first
    keep = (rank < per) & (ys < num_class)
    chosen = shuffled[keep]
    return _fill(chosen, cand, size)


def _fill(chosen: torch.Tensor, cand: torch.Tensor, size: int) -> torch.Tensor:
    """Fill unused slots with random candidates that were not chosen ("breaking the equilibrium")."""
    rest = size - len(chosen)
    if rest <= 0:
        return chosen[:size]
    left = cand[~torch.isin(cand, chosen)]
    extra = left[_perm(len(left), cand.device)[:rest]]
    return torch.cat([chosen, extra])


class MemoryManager:
    """Holds the memory as a tensor of dataset indices; ``update`` replaces it."""

    name = "base"
    needs_scorer = False

    def __init__(self, size: int, labels: torch.Tensor) -> None:
        self.size = size
        self.labels = labels  # run label of every training sample (device tensor)
        self.indices = torch.empty(0, dtype=torch.long, device=labels.device)
        self.seen = 0
        self.scores: Optional[torch.Tensor] = None

    def __len__(self) -> int:
        return len(self.indices)

    def update(self, stream: torch.Tensor, task_id: int, num_class: int, scorer: Scorer | None = None) -> None:
        cand = torch.cat([stream, self.indices])
        if len(cand) <= self.size:
            self.indices = cand
            self.seen = len(cand)
            return
        self.indices = self.select(stream, cand, task_id, num_class, scorer)

    def select(self, stream, cand, task_id, num_class, scorer):  # pragma: no cover - abstract
        raise NotImplementedError

    def class_counts(self, num_classes: int) -> list[int]:
        return torch.bincount(self.labels[self.indices], minlength=num_classes).tolist()

    def state_dict(self) -> dict:
        return {"indices": self.indices.cpu(), "seen": self.seen}


@register_manager("random")
class RandomMemory(MemoryManager):
    """Uniformly random subset of stream + memory."""

    def select(self, stream, cand, task_id, num_class, scorer):
        return cand[_perm(len(cand), cand.device)[: self.size]]


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

    def update(self, stream, task_id, num_class, scorer=None):
        cand_len = len(stream) + len(self.indices)
        if cand_len <= self.size:
            self.indices = torch.cat([stream, self.indices])
            self.seen = cand_len
            return
        self.indices = self.select(stream, None, task_id, num_class, scorer)


@register_manager("uncertainty")
class UncertaintyMemory(MemoryManager):
    """Rainbow Memory: per class, samples spread evenly over the sorted uncertainty range."""

    needs_scorer = True

    def select(self, stream, cand, task_id, num_class, scorer):
        if task_id == 0 or scorer is None:
            return class_balanced_random(cand, self.labels, self.size, num_class)
        unc = scorer(cand)
        self.scores = unc
        return diverse_by_uncertainty(cand, unc, self.labels[cand], self.size, num_class)


def diverse_by_uncertainty(cand: torch.Tensor, unc: torch.Tensor, y: torch.Tensor, size: int, num_class: int) -> torch.Tensor:
    """Per class c with n_c candidates and m = size // num_class slots: sort by uncertainty,
    take every floor(n_c/m)-th sample, first m of them; a class with n_c <= m keeps all;
    unused slots are filled at random."""
    per = size // num_class
    # sort by (class, uncertainty), stable so ties keep candidate order
    order = torch.argsort(unc, stable=True)
    order = order[torch.argsort(y[order], stable=True)]
    ys = y[order]
    counts = torch.bincount(ys, minlength=num_class)
    starts = torch.cumsum(counts, 0) - counts
    rank = torch.arange(len(order), device=cand.device) - starts[ys]
    n_c = counts[ys]
    jump = torch.clamp(n_c // max(per, 1), min=1)
    keep = (ys < num_class) & (((n_c <= per)) | ((rank % jump == 0) & (rank // jump < per)))
    chosen = cand[order[keep]]
    return _fill(chosen, cand, size)


@register_manager("class_balanced")
class ClassBalancedMemory(MemoryManager):
    """Class-balanced random memory (GDumb's)."""

    def select(self, stream, cand, task_id, num_class, scorer):
        return class_balanced_random(cand, self.labels, self.size, num_class)
