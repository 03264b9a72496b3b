"""Shared pieces of EWC and RWalk: the quadratic penalty, the batched Fisher pass, the regularised Method."""
from __future__ import annotations

from typing import Iterable, Iterator

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call, grad, vmap

from methods.base import Method
from methods.engine.trainer import StopRun
from methods.engine.optim import SGD_STABLE
from utils.data.batches import shuffled_batches

FISHER_CHUNK = 512  # samples per vmapped Fisher chunk (per-batch gradients of the chunk live at once)


class UnstablePenalty(StopRun):
    """The penalty is stiffer than SGD at this learning rate can follow: the run would diverge."""

    def __init__(self, task_id: int, message: str, advice: str) -> None:
        super().__init__(task_id, message)
        self.advice = advice


HEAD = "fc"  # the models' head module: its parameters are never regularised


def reg_params(model: nn.Module) -> dict[str, nn.Parameter]:
    """Regularised parameters by name: every trainable parameter outside the head ``fc``."""
    return {n: p for n, p in model.named_parameters() if p.requires_grad and n.split(".")[0] != HEAD}


def fold_counts(model: nn.Module) -> dict[str, int]:
    """Parameters that stand for ``c`` slices of the paper's model (mlp400's grey fold): name -> c."""
    fn = getattr(model, "folded", None)
    return fn() if fn is not None else {}


class _Quadratic(torch.autograd.Function):
    """sum_i A_i (p_i - m_i)^2 / c + const, with the gradient 2 A (p - m) from the forward pass.

    ``c`` (per tensor, None for 1) is the slice count of a folded parameter p = sum of c slices that
    share one drift d = (p - m) / c: the c slices' penalty is c A d^2 = A (p - m)^2 / c, and the
    gradient the optimizer must see on p (the sum of the slices' gradients 2 A d) is 2 A (p - m)."""

    @staticmethod
    def forward(ctx, imp, mean, const, scale, *params):
        diff = torch._foreach_sub(params, mean)
        a_diff = torch._foreach_mul(diff, imp)
        ctx.save_for_backward(*a_diff)
        # ATen's own sums, not BLAS dot: MKL's sdot rounds differently on AMD and Intel CPUs even under
        # MKL_CBWR=COMPATIBLE (the golden file's ewc_offline loss came out 2 ulp apart); diff is not saved
        torch._foreach_mul_(diff, a_diff)
        return const + sum(t.sum() if c is None else t.sum() / c for t, c in zip(diff, scale))

    @staticmethod
    def backward(ctx, g):
        return (None, None, None, None, *torch._foreach_mul(ctx.saved_tensors, 2 * g))


class QuadraticPenalty:
    """sum over slots s of sum_i F_s,i (theta_i - theta*_s,i)^2, parameters matched by name.

    The slots are kept (``slots``) and merged into one quadratic (A = sum F_s, m = sum F_s theta*_s / A,
    const = sum F_s theta*_s^2 - A m^2) so a step costs the same for any number of slots. Importances
    are per slice of the paper's model: a folded parameter (``folds``: name -> slice count c) is
    penalised as its c slices would be (see _Quadratic)."""

    def __init__(self) -> None:
        self.slots: list[tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]] = []
        self.folds: dict[str, int] = {}
        self._merged: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
        self._const = torch.zeros(())

    def add(self, importance: dict[str, torch.Tensor], anchor: dict[str, torch.Tensor], replace: bool,
            folds: dict[str, int] | None = None) -> None:
        """Store (importance, anchor); ``replace`` keeps a single slot (online runs)."""
        if replace:
            self.slots = []
        self.folds = dict(folds or {})
        self.slots.append(({n: t.detach().clone() for n, t in importance.items()},
                           {n: t.detach().clone() for n, t in anchor.items()}))
        self._merge()

    def _merge(self) -> None:
        """The slots as one quadratic, over the parameter names of the newest slot (float64 sums)."""
        self._merged, const = {}, 0.0
        for n, imp0 in self.slots[-1][0].items():
            pairs = [(s[0][n].double(), s[1][n].double()) for s in self.slots if n in s[0]]
            imp = sum(f for f, _ in pairs)
            mean = torch.where(imp > 0, sum(f * t for f, t in pairs) / imp.clamp_min(1e-300), 0.0)
            part = sum((f * t ** 2).sum() for f, t in pairs) - (imp * mean ** 2).sum()
            const = const + (part if n not in self.folds else part / self.folds[n])
            self._merged[n] = (imp.to(imp0.dtype), mean.to(imp0.dtype))
            self._const = const.to(imp0)

    def __len__(self) -> int:
        return len(self.slots)

    def gradient(self, params: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """d penalty / d p = 2 A (p - m) at ``params`` (the names the slots cover), as backward gives it."""
        return {n: 2 * a * (params[n] - m) for n, (a, m) in self._merged.items() if n in params}

    def max_curvature(self) -> float:
        """The largest second derivative of the penalty along one parameter: 2 A / c (0 when empty)."""
        return max((2 * float(a.max()) / self.folds.get(n, 1) for n, (a, _) in self._merged.items() if a.numel()),
                   default=0.0)

    def state_dict(self) -> dict:
        return {"slots": [[{n: t.cpu() for n, t in imp.items()}, {n: t.cpu() for n, t in anc.items()}]
                          for imp, anc in self.slots], "folds": dict(self.folds)}

    def load_state_dict(self, state: dict, device: torch.device) -> None:
        self.slots = [({n: t.to(device) for n, t in imp.items()}, {n: t.to(device) for n, t in anc.items()})
                      for imp, anc in state["slots"]]
        self.folds = dict(state.get("folds", {}))
        if self.slots:
            self._merge()

    def __call__(self, params: dict[str, torch.Tensor]) -> torch.Tensor | None:
        """The penalty at ``params`` (names absent from the slots are not penalised); None if empty."""
        names = [n for n in params if n in self._merged]
        if not names:
            return None
        return _Quadratic.apply([self._merged[n][0] for n in names], [self._merged[n][1] for n in names],
                                self._const, [self.folds.get(n) for n in names], *[params[n] for n in names])


def batch_grads(model: nn.Module, names: list[str], xs: torch.Tensor) -> dict[str, torch.Tensor]:
    """Gradients of the mean cross-entropy at the model's own predicted labels, one per mini-batch
    of xs [K, B, ...] ([K, *param.shape] per name); the model as it is (eval mode: BN running stats)."""
    fixed = {n: p.detach() for n, p in model.named_parameters() if n not in names}
    buffers = dict(model.named_buffers())

    def loss(sub: dict[str, torch.Tensor], x: torch.Tensor) -> torch.Tensor:
        logits = functional_call(model, ({**fixed, **sub}, buffers), (x,))
        return F.cross_entropy(logits, logits.argmax(1).detach())

    sub = {n: p.detach() for n, p in model.named_parameters() if n in names}
    return vmap(grad(loss), in_dims=(None, 0))(sub, xs)


def fisher_diagonal(model: nn.Module, names: list[str], chunks: Iterable[torch.Tensor], n_data: int,
                    offset: dict[str, torch.Tensor] | None = None) -> dict[str, torch.Tensor]:
    """EWC's diagonal Fisher: sum over mini-batches b of (g_b + offset)^2 * |b| / n_data, per slice of
    the paper's model (a folded parameter's gradient is c times its slices': its sum is divided by c^2).

    chunks: tensors [K, B, ...] of equal-size augmented mini-batches (the public code's train loader
    drops the last partial batch, yet divides by the full data size); offset: the gradient of the
    current penalty, which the public code adds to every mini-batch loss."""
    params = dict(model.named_parameters())
    fisher = {n: torch.zeros_like(params[n]) for n in names}
    for xs in chunks:
        g = batch_grads(model, names, xs)
        for n in names:  # in place on the fresh per-batch gradients: no extra [K, ...] buffers
            gn = g[n] if offset is None else g[n].add_(offset[n])
            fisher[n].add_(gn.square_().sum(0), alpha=xs.shape[1] / n_data)
    for n, c in fold_counts(model).items():
        if n in fisher:
            fisher[n].div_(c * c)
    return fisher


class RegularizedMethod(Method):
    """Fine-tuning (stream + memory) plus reg_coef * penalty; importance and anchors are stored after
    every training call: online runs replace one slot, offline runs add one per call (= per task)."""

    default_memory = "reservoir"
    # The penalty sees each channel slice of mlp400's input weight. On grey input the slices share
    # their gradients, but weight decay pulls each toward 0 by its own value, so their drifts from
    # the anchors, the Fisher's penalty offset and RWalk's EMA differ slightly: the fold is not exact
    # (docs/baselines.md). --grey_fold all folds anyway, with importances in per-slice units.
    exact_grey_fold = False
    after_fit_timer = "importance"

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.reg_coef = float(self.cfg.reg_coef)
        self.online_reg = self.cfg.stream_env == "online"
        self.penalty = QuadraticPenalty()
        self.n_calls = 0  # the public code's task_count: training calls so far
        self._reg_of: tuple[nn.Module, nn.Module | None] | None = None  # (model, head) of _reg
        self._reg: dict[str, nn.Parameter] = {}

    def reg_params(self) -> dict[str, nn.Parameter]:
        """``reg_params(self.model)``, kept while the model and its head are the same objects:
        walking the modules at every step cost 0.7 s per MNIST run."""
        head = getattr(self.model, HEAD, None)
        if self._reg_of is None or self._reg_of[0] is not self.model or self._reg_of[1] is not head:
            self._reg_of, self._reg = (self.model, head), reg_params(self.model)
        return self._reg

    def penalty_loss(self) -> torch.Tensor | None:
        pen = self.penalty(self.reg_params())
        return None if pen is None else self.reg_coef * pen

    def extra_loss(self, x: torch.Tensor, y: torch.Tensor, logits: torch.Tensor) -> torch.Tensor | None:
        return self.penalty_loss()

    def importance(self, task_id: int, phase: str) -> dict[str, torch.Tensor]:  # pragma: no cover - abstract
        raise NotImplementedError

    def after_fit(self, task_id: int, phase: str) -> None:
        anchor = {n: p.detach().clone() for n, p in self.reg_params().items()}
        imp = self.importance(task_id, phase)
        self.penalty.add(imp, anchor, replace=self.online_reg and len(self.penalty) > 0,
                         folds=fold_counts(self.model))
        self.n_calls += 1
        self.check_stable(task_id, phase)

    def check_stable(self, task_id: int, phase: str) -> None:
        """Stop before SGD diverges on the penalty: along its stiffest parameter the penalty's curvature
        is h = reg_coef * 2 A / c, and Nesterov SGD at the schedule's top lr diverges once lr h >= 19/14."""
        h = self.penalty.max_curvature()
        if self.cfg.opt_name != "sgd" or self.cfg.lr * self.reg_coef * h < SGD_STABLE:
            return
        top = SGD_STABLE / (self.cfg.lr * h)
        raise UnstablePenalty(task_id, (
            f"the penalty after task {task_id}'s {phase} training is too stiff for SGD: its largest "
            f"importance gives a curvature of {self.reg_coef * h:.4g} (--reg_coef {self.reg_coef:g} x {h:.4g}), and "
            f"SGD with Nesterov momentum 0.9 at --lr {self.cfg.lr:g} diverges above {SGD_STABLE / self.cfg.lr:.4g}"),
            f"Start the run again with --reg_coef below {top:.3g} (this task's limit: importances grow over the "
            f"tasks, so leave a margin) or with a smaller --lr.")

    def extra_state(self) -> dict:
        return {"penalty": self.penalty.state_dict(), "n_calls": self.n_calls}

    def load_extra_state(self, state: dict) -> None:
        self.penalty.load_state_dict(state["penalty"], self.device)
        self.n_calls = state["n_calls"]

    def fisher(self, phase: str) -> dict[str, torch.Tensor]:
        """Fisher over the call's data: training augmentation, shuffled batches, last partial dropped."""
        pool, bsz = self.call_pool(phase), self.cfg.batchsize
        params = self.reg_params()
        names = list(params)
        pen = self.penalty_loss()
        offset = None if pen is None else dict(zip(names, torch.autograd.grad(pen, list(params.values()))))
        self.model.eval()
        batches = shuffled_batches(pool, bsz, drop_last=True)
        step = max(1, FISHER_CHUNK // bsz)

        def chunks() -> Iterator[torch.Tensor]:
            for s in range(0, len(batches), step):
                x = self.train_aug(self.data.train.images[torch.cat(batches[s:s + step])])
                yield x.view(-1, bsz, *x.shape[1:])
        return fisher_diagonal(self.model, names, chunks(), len(pool), offset)
