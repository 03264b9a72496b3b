"""Optimizers and schedules of the public code, and its per-call learning-rate warm start."""
from __future__ import annotations

import inspect
import sys
from typing import Any, Callable, Iterable

import torch
from torch import nn

OPTIMIZERS = ("sgd", "adam", "radam")
SCHEDULERS = ("cos", "anneal", "multistep")
SGD_MOMENTUM = 0.9  # Nesterov
# Nesterov SGD (momentum mu) on a quadratic of curvature h diverges once lr * h >= 2 (1 + mu) / (1 + 2 mu)
SGD_STABLE = 2 * (1 + SGD_MOMENTUM) / (1 + 2 * SGD_MOMENTUM)  # 19/14


def dynamo_loaded() -> bool:
    """Whether ``torch._dynamo`` is imported: nothing can be compiling or tracing before it is."""
    return "torch._dynamo" in sys.modules


def _unguarded(fn: Callable) -> Callable:
    """``fn``, or the function below torch.optim's decorators (kept as ``__wrapped__``) while dynamo is not loaded."""
    return fn if dynamo_loaded() else inspect.unwrap(fn)


class _NoDynamoImport:
    """torch.optim's own methods, called below their ``torch._dynamo`` wrappers while that module is not loaded.

    The wrappers (``torch._disable_dynamo``, the step's grad-mode guard) import ``torch._dynamo`` on their
    first call: about 1 s of every run's start-up, for guards that only act while dynamo traces a function,
    which it cannot do unless it is loaded. Once it is (a compiled step), every call goes through torch's
    wrappers as usual. The arithmetic is torch's own in both cases."""

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        return _unguarded(torch.optim.Optimizer.add_param_group)(self, param_group)

    def zero_grad(self, set_to_none: bool = True) -> None:
        if set_to_none and not torch._C._autograd._profiler_enabled():  # torch's loop, less its profiler label
            for group in self.param_groups:
                for p in group["params"]:
                    p.grad = None
            return None
        return _unguarded(torch.optim.Optimizer.zero_grad)(self, set_to_none)

    def state_dict(self) -> dict[str, Any]:
        return _unguarded(torch.optim.Optimizer.state_dict)(self)

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        return _unguarded(torch.optim.Optimizer.load_state_dict)(self, state_dict)

    def step(self, closure: Callable | None = None):  # noqa: ANN201 (torch's own return)
        fn = super().step.__func__  # the torch class's step, as decorated
        if dynamo_loaded():
            return fn(self, closure)
        prev = torch.is_grad_enabled()
        try:  # what torch's _use_grad_for_differentiable does, less its dynamo graph breaks
            torch.set_grad_enabled(self.defaults["differentiable"])
            return inspect.unwrap(fn)(self, closure)
        finally:
            torch.set_grad_enabled(prev)


class Adam(_NoDynamoImport, torch.optim.Adam):
    """``torch.optim.Adam`` that does not import ``torch._dynamo`` (see _NoDynamoImport). A fused Adam with plain
    settings steps by the two calls torch's step makes after its checks and regrouping (``_fused_step``): the same
    kernels on the same lists, without about 50 us of Python per step; anything else takes torch's step."""

    def step(self, closure: Callable | None = None):  # noqa: ANN201 (torch's own return)
        plan = None if closure is not None or dynamo_loaded() else self._fused_plan()
        if plan is None:
            return super().step(closure)
        with torch.no_grad():
            for group, tensors in plan:
                _fused_step(group, *tensors)
        return None

    def _fused_plan(self) -> list[tuple[dict, tuple[list, ...]]] | None:
        """Each group's (params, grads, exp_avgs, exp_avg_sqs, steps) where torch's step would reach
        ``torch._fused_adam_`` on them unchanged: fused, no amsgrad, capture, differentiation, decoupled decay,
        gradient scaler, tensor hyper-parameters, sparse or complex tensors; every parameter with a gradient
        already holds its state, all on one device and of one dtype (torch's regrouping then keeps the order).
        None otherwise."""
        if getattr(self, "grad_scale", None) is not None or getattr(self, "found_inf", None) is not None:
            return None
        plan, kinds = [], set()
        for group in self.param_groups:
            if not group["fused"] or group["amsgrad"] or group["capturable"] or group["differentiable"] \
                    or group.get("decoupled_weight_decay", False) \
                    or not all(isinstance(v, float) for v in (group["lr"], *group["betas"])):
                return None
            tensors: tuple[list, ...] = ([], [], [], [], [])
            for p in group["params"]:
                if p.grad is None:
                    continue
                state = self.state.get(p)
                if not state or p.grad.is_sparse or p.is_complex():
                    return None
                kinds.add((p.device, p.dtype))
                for out, t in zip(tensors, (p, p.grad, state["exp_avg"], state["exp_avg_sq"], state["step"])):
                    out.append(t)
            plan.append((group, tensors))
        return plan if len(kinds) <= 1 else None


def _fused_step(group: dict, params: list, grads: list, exp_avgs: list, exp_avg_sqs: list, steps: list) -> None:
    """What ``torch.optim.adam._fused_adam`` runs for one device and dtype: the step counts, then the kernel."""
    if not params:
        return
    torch._foreach_add_(steps, 1)
    beta1, beta2 = group["betas"]
    torch._fused_adam_(params, grads, exp_avgs, exp_avg_sqs, [], steps, amsgrad=False, lr=group["lr"],
                       beta1=beta1, beta2=beta2, weight_decay=group["weight_decay"], eps=group["eps"],
                       maximize=group["maximize"], grad_scale=None, found_inf=None)


class SGD(_NoDynamoImport, torch.optim.SGD):
    """``torch.optim.SGD`` that does not import ``torch._dynamo`` (see _NoDynamoImport)."""


class RAdam(_NoDynamoImport, torch.optim.RAdam):
    """``torch.optim.RAdam`` that does not import ``torch._dynamo`` (see _NoDynamoImport)."""


def make_optimizer(name: str, lr: float, params: nn.Module | Iterable[nn.Parameter],
                   sched: str) -> tuple[torch.optim.Optimizer, torch.optim.lr_scheduler.LRScheduler]:
    """SGD (momentum 0.9, Nesterov, wd 1e-4), adam (wd 1e-6) or radam (wd 1e-5), and the schedule."""
    params = list(params.parameters() if isinstance(params, nn.Module) else params)
    # fused kernels: one pass over each parameter per step (the same update as the loop version)
    if name == "sgd":
        opt = SGD(params, lr=lr, momentum=SGD_MOMENTUM, nesterov=True, weight_decay=1e-4, fused=True)
    elif name == "adam":
        opt = Adam(params, lr=lr, weight_decay=1e-6, fused=True)
    elif name == "radam":
        opt = RAdam(params, lr=lr, weight_decay=1e-5, foreach=True)
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
    named = [(n, p) for n, p in model.named_parameters() if p.grad is not None]
    if not scale:
        total = torch.nn.utils.get_total_norm([p.grad for _, p in named])
    else:
        norms = list(torch._foreach_norm([p.grad for _, p in named]))  # vector_norm of each, one call
        for i, (n, _) in enumerate(named):
            if n in scale:  # the others' factor would be exactly 1.0
                norms[i] = norms[i] * scale[n]
        total = torch.linalg.vector_norm(torch.stack(norms))
    if not (total.device.type == "cpu" and bool(max_norm / (total + 1e-6) >= 1.0)):
        torch.nn.utils.clip_grads_with_norm_([p for _, p in named], max_norm, total)
    # else: torch's factor is exactly 1.0, and x * 1.0 == x: a pass over every gradient saved (on a CPU the
    # comparison costs no device sync; a NaN norm compares False and is multiplied in, as torch does)
    return total
