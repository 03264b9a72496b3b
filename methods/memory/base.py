"""The memory manager base and registry: a memory is a tensor of training-set indices (plus scores)."""
from __future__ import annotations

from typing import Callable, Optional

import torch
import torch.nn.functional as F
from torch import nn

from utils.data.augment import normalize

Scorer = Callable[[torch.Tensor], torch.Tensor]  # candidate indices -> uncertainty per candidate
Featurizer = Callable[[torch.Tensor], torch.Tensor]  # candidate indices -> L2-normalised features [n, D]
FEATURE_BATCH = 1024

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


def randperm(n: int, device: torch.device) -> torch.Tensor:
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
    shuffled = cand[randperm(len(cand), cand.device)]
    ys = labels[shuffled]
    rank = rank_within_class(ys)
    keep = (rank < per) & (ys < num_class)
    chosen = shuffled[keep]
    return fill_random(chosen, cand, size)


def fill_random(chosen: torch.Tensor, cand: torch.Tensor, size: int) -> torch.Tensor:
    """Fill unused slots with random candidates that were not chosen ("breaking the equilibrium")."""
    rest = size - len(chosen)
    if rest <= 0:
        return chosen[:size]
    left = cand[~torch.isin(cand, chosen)]
    extra = left[randperm(len(left), cand.device)[:rest]]
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
        """The memory as data: indices, reservoir count and the last uncertainty scores."""
        return {"indices": self.indices.cpu(), "seen": self.seen,
                "scores": None if self.scores is None else self.scores.cpu()}

    def load_state_dict(self, state: dict) -> None:
        dev = self.labels.device
        self.indices = state["indices"].to(dev)
        self.seen = state["seen"]
        self.scores = None if state["scores"] is None else state["scores"].to(dev)


def model_featurizer(model: nn.Module, images: torch.Tensor, mean: tuple[float, ...], std: tuple[float, ...],
                     batch: int = FEATURE_BATCH) -> Featurizer:
    """Featurizer over ``images`` (uint8 [N,C,H,W]): test-time preprocessing (normalisation only),
    ``model.features`` in eval mode, batched on the device, each row L2-normalised."""
    @torch.no_grad()
    def featurize(idx: torch.Tensor) -> torch.Tensor:
        model.eval()
        out = [F.normalize(model.features(normalize(images[idx[s:s + batch]], mean, std)).float(), dim=1)
               for s in range(0, len(idx), batch)]
        return torch.cat(out) if out else torch.empty(0, 0, device=images.device)
    return featurize
