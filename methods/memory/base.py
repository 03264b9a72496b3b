"""Episodic memory managers: given candidate indices (and a scorer when needed), keep a subset."""
from __future__ import annotations

from typing import Callable, Optional

import torch
import torch.nn.functional as F

from methods.prototype import herding

Scorer = Callable[[torch.Tensor], torch.Tensor]  # candidate indices -> uncertainty per candidate
Featurizer = Callable[[torch.Tensor], torch.Tensor]  # candidate indices -> L2-normalised features [n, D]

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


def rank_within_class(y: torch.Tensor) -> torch.Tensor:
    """For each position, how many earlier positions hold the same label (vectorised)."""
    order = torch.argsort(y, stable=True)
    sorted_y = y[order]
    rank = torch.empty_like(order)
    rank[order] = torch.arange(len(order), device=y.device) - torch.searchsorted(sorted_y, sorted_y)
    return rank


def class_balanced_random(cand: torch.Tensor, labels: torch.Tensor, size: int, num_class: int) -> torch.Tensor:
    """Up to size // num_class random samples of each class 0..num_class-1, then random fill."""
    per = size // num_class
    shuffled = cand[_perm(len(cand), cand.device)]
    ys = labels[shuffled]
    rank = rank_within_class(ys)
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
    needs_features = False  # the manager selects on model features (update's ``featurizer``)

    def __init__(self, size: int, labels: torch.Tensor) -> None:
        self.size = size
        self.labels = labels  # run label of every training sample (device tensor)
        self.indices = torch.empty(0, dtype=torch.long, device=labels.device)
        self.seen = 0
        self.scores: Optional[torch.Tensor] = None

    def __len__(self) -> int:
        return len(self.indices)

    def update(self, stream: torch.Tensor, task_id: int, num_class: int, scorer: Scorer | None = None,
               featurizer: Featurizer | None = None) -> None:
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

    def update(self, stream, task_id, num_class, scorer=None, featurizer=None):
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


@register_manager("prototype")
class PrototypeMemory(MemoryManager):
    """iCaRL herding (public mean_feature_sampling), m = size // num_class per class: old exemplar
    sets are first cut to m at random; a class that still has m exemplars keeps them; otherwise its
    candidates (this task's stream of the class, then its old exemplars) are all kept if they fit,
    else m are herded on L2-normalised features towards the class mean, which is computed from the
    candidates the first time the class is herded and kept from then on. Unused slots stay empty."""

    needs_features = True

    def __init__(self, size: int, labels: torch.Tensor) -> None:
        super().__init__(size, labels)
        self.class_mean: dict[int, torch.Tensor] = {}

    def update(self, stream, task_id, num_class, scorer=None, featurizer=None):
        cand = torch.cat([stream, self.indices])
        if len(cand) <= self.size:
            self.indices = cand
            self.seen = len(cand)
            return
        if featurizer is None:
            raise ValueError("prototype memory needs a featurizer (model features of the candidates)")
        m = self.size // num_class
        old = reduce_per_class(self.indices, self.labels, m)
        y_old, y_new = self.labels[old], self.labels[stream]
        old_counts = torch.bincount(y_old, minlength=num_class).tolist()
        kept: list[torch.Tensor] = []
        herd: list[tuple[int, int, torch.Tensor]] = []  # (class, slot in kept, candidates)
        for c in range(num_class):
            ex = old[y_old == c]
            if old_counts[c] >= m:
                kept.append(ex)
                continue
            cand_c = torch.cat([stream[y_new == c], ex])
            kept.append(cand_c)
            if len(cand_c) > m:
                herd.append((c, len(kept) - 1, cand_c))
        if herd:
            feats = featurizer(torch.cat([h[2] for h in herd])).split([len(h[2]) for h in herd])
            for (c, slot, cand_c), f in zip(herd, feats):
                if c not in self.class_mean:  # the public code never replaces a class mean
                    self.class_mean[c] = F.normalize(f.mean(0), dim=0)
                kept[slot] = cand_c[herding(f, self.class_mean[c], m)]
        self.indices = torch.cat(kept) if kept else old[:0]


def reduce_per_class(indices: torch.Tensor, labels: torch.Tensor, m: int) -> torch.Tensor:
    """A random subset of min(m, n_c) samples of each class c (public _reduce_exemplar_sets)."""
    if len(indices) == 0:
        return indices
    shuffled = indices[_perm(len(indices), indices.device)]
    rank = rank_within_class(labels[shuffled])
    return shuffled[rank < m]

