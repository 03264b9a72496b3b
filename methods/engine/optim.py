"""Optimizers and schedules of the public code, and its per-call learning-rate warm start."""
from __future__ import annotations

from typing import Iterable

import torch
from torch import nn

OPTIMIZERS = ("sgd", "adam", "radam")
SCHEDULERS = ("cos", "anneal", "multistep")
SGD_MOMENTUM = 0.9  # Nesterov
# Nesterov SGD (momentum mu) on a quadratic of curvature h diverges once lr * h >= 2 (1 + mu) / (1 + 2 mu)
SGD_STABLE = 2 * (1 + SGD_MOMENTUM) / (1 + 2 * SGD_MOMENTUM)  # 19/14


def make_optimizer(name: str, lr: float, params: nn.Module | Iterable[nn.Parameter],
                   sched: str) -> tuple[torch.optim.Optimizer, torch.optim.lr_scheduler.LRScheduler]:
    """SGD (momentum 0.9, Nesterov, wd 1e-4), adam (wd 1e-6) or radam (wd 1e-5), and the schedule."""
    params = list(params.parameters() if isinstance(params, nn.Module) else params)
    # fused kernels: one pass over each parameter per step (the same update as the loop version)
    if name == "sgd":
        opt = torch.optim.SGD(params, lr=lr, momentum=SGD_MOMENTUM, nesterov=True, weight_decay=1e-4, fused=True)
    elif name == "adam":
        opt = torch.optim.Adam(params, lr=lr, weight_decay=1e-6, fused=True)
    elif name == "radam":
        opt = torch.optim.RAdam(params, lr=lr, weight_decay=1e-5, foreach=True)
    else:
        raise ValueError(f"unknown optimizer '{name}'; valid: sgd, adam, radam")
    if sched == "cos":
        sch = torch.optim.lr_scheduler.CosineAnnealingWarmRestarts(opt, T_0=1, T_mult=2, eta_min=lr * 0.01)
    elif sched == "anneal":
        sch = torch.optim.lr_scheduler.ExponentialLR(opt, 1 / 1.1)
    elif sched == "multistep":
        sch = torch.optim.lr_scheduler.MultiStepLR(opt, milestones=[30, 60, 80, 90], gamma=0.1)
    else:
        raise ValueError(f"unknown scheduler '{sched}'; valid: cos, anneal, multistep")
    return opt, sch


def warm_start_lr(optimizer: torch.optim.Optimizer, scheduler: torch.optim.lr_scheduler.LRScheduler, lr: float,
                  epoch: int) -> float:
    """The public code's schedule within one training call: epoch 0 at lr/10, epoch 1 at lr, then one
    scheduler step per epoch. Returns the epoch's learning rate."""
    if epoch == 0:
        for g in optimizer.param_groups:
            g["lr"] = lr * 0.1
    elif epoch == 1:
        for g in optimizer.param_groups:
            g["lr"] = lr
    else:
        scheduler.step()
    return optimizer.param_groups[0]["lr"]


def clip_grad_norm_unfolded(model: nn.Module, max_norm: float) -> torch.Tensor:
    """``torch.nn.utils.clip_grad_norm_`` over ``model``'s gradients, the norm counted as the 3-channel mlp400
    counts it: a grey-folded input weight (models.mlp) stands for ``c`` slices, so its gradient's norm is
    scaled by 1/sqrt(c) (the SGD fold's sum of the slices: c g) or sqrt(c) (the Adam fold's one slice: g).
    Returns the total norm. Without a fold it is torch's own function, bit for bit."""
    scale = {n: c ** -0.5 for n, c in getattr(model, "folded", dict)().items()}
    scale.update({n: c ** 0.5 for n, c in getattr(model, "per_slice", dict)().items()})
    if not scale:
        return torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm)
    named = [(n, p) for n, p in model.named_parameters() if p.grad is not None]
    norms = [torch.linalg.vector_norm(p.grad) * scale.get(n, 1.0) for n, p in named]
    total = torch.linalg.vector_norm(torch.stack(norms))
    torch.nn.utils.clip_grads_with_norm_([p for _, p in named], max_norm, total)
    return total
