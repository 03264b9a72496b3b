"""Pieces of the sample-wise online protocol of i-Blurry (CLIB; SPEC section 12) and Si-Blurry (SPEC section 13):
labels by order of appearance, the anytime evaluations' places, the head grown per new class, and the steps a chunk
earns with ``online_iter``."""
from __future__ import annotations

import torch
from torch import nn


def first_positions(stream_labels: torch.Tensor, n_classes: int) -> torch.Tensor:
    """[n_classes] position of each class's first sample in ``stream_labels``; len(stream_labels) for a
    class that never appears."""
    n = len(stream_labels)
    first = torch.full((n_classes,), n, dtype=torch.long, device=stream_labels.device)
    return first.scatter_reduce_(0, stream_labels, torch.arange(n, device=stream_labels.device), reduce="amin")


def anytime_marks(seen: int, n: int, period: int) -> list[int]:
    """The anytime evaluations' sample counts among the next ``n`` stream samples after ``seen``: every multiple of
    ``period`` in (seen, seen + n] (none when ``period`` <= 0). The one after sample p of those ``n`` is at
    seen + p + 1."""
    return list(range((seen // period + 1) * period, seen + n + 1, period)) if period > 0 else []


def exposure_ranks(stream_labels: torch.Tensor, n_classes: int) -> torch.Tensor:
    """[n_classes] rank of each class in the order of its first appearance in ``stream_labels`` (the
    label the protocol gives it); -1 for a class that never appears."""
    n = len(stream_labels)
    first = first_positions(stream_labels, n_classes)
    order = torch.argsort(first, stable=True)
    ranks = torch.empty_like(order)
    ranks[order] = torch.arange(n_classes, device=order.device)
    return torch.where(first < n, ranks, torch.full_like(ranks, -1))


def grow_head(fc: nn.Linear, n_out: int) -> nn.Linear:
    """A new Linear with ``n_out`` outputs whose first rows are ``fc``'s weight rows; every bias is
    freshly initialised, the old classes' too (SPEC: the CLIB code's head growth)."""
    new = nn.Linear(fc.in_features, n_out, bias=fc.bias is not None).to(fc.weight.device, fc.weight.dtype)
    with torch.no_grad():
        r = min(fc.out_features, n_out)
        new.weight[:r] = fc.weight[:r]
    return new


class StepCounter:
    """Each sample adds ``online_iter`` (a float) to a counter; a full temporary batch runs
    ``int(counter)`` training steps and keeps the remainder."""

    def __init__(self, online_iter: float) -> None:
        if not online_iter > 0:
            raise ValueError(f"online_iter must be > 0, got {online_iter}")
        self.online_iter = float(online_iter)
        self.counter = 0.0

    def add(self, n_samples: int) -> int:
        """Count ``n_samples`` new samples and return the steps due now."""
        self.counter += self.online_iter * n_samples
        steps = int(self.counter)
        self.counter -= steps
        return steps

    def state_dict(self) -> dict:
        return {"online_iter": self.online_iter, "counter": self.counter}

    def load_state_dict(self, state: dict) -> None:
        self.online_iter, self.counter = float(state["online_iter"]), float(state["counter"])


class BatchStepCounter(StepCounter):
    """Si-Blurry's rule: every chunk of new samples (a stream batch, the last one possibly partial) runs
    int(online_iter) training steps, whatever its size (the official trainer's online_step)."""

    def add(self, n_samples: int) -> int:
        return int(self.online_iter) if n_samples else 0


def trainable(batches: list[torch.Tensor], model: nn.Module) -> list[torch.Tensor]:
    """``batches`` less a batch of one sample when ``model`` has a BatchNorm1d, which cannot train on one
    (mlp400; the CLIB code's memory epochs would stop with an error there)."""
    if not any(isinstance(m, nn.BatchNorm1d) for m in model.modules()):
        return batches
    return [b for b in batches if len(b) > 1]
