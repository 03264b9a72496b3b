"""RWalk baseline (the public code's methods/regularization.py RWalk): EMA Fisher + path-integral score."""
from __future__ import annotations

import torch

from methods import register
from methods.regularization import RegularizedMethod, fold_counts

ALPHA = 0.5  # EMA weight of the newest squared gradient
EPS = 1e-3  # the score's denominator floor


@register("rwalk")
class RWalk(RegularizedMethod):
    """Per training step, in the public code's order (update_fisher_and_score): the score grows by
    the step's increment using the F before this step, then F = g^2 at its first update and
    F = (1 - alpha) F + alpha g^2 afterwards; g = the step's gradient of CE (+ cutmix) + penalty, in
    train mode. F is never reset; the run's very first step updates nothing (public: no gradient
    existed before it). After every training call: score = the call's score at the first call, else
    the mean of the previous score and the call's; importance = F + score (no normalisation, as in
    the public code); the call's score restarts at 0.

    ``score_rule`` "public" (default): the public code's increment (g_new - g_old) / (0.5 F
    (theta_new - theta_old)^2 + eps) is always 0, because it takes its "old" snapshots with
    ``detach()`` (no copy), and the in-place optimizer step and gradient accumulation (PyTorch 1.x)
    make old and new the same tensors: the score stays 0 and RWalk is an EMA-Fisher EWC.
    "paper": the RWalk path integral with real snapshots, per step (Delta t = 1) max(0, -g dtheta /
    (0.5 F dtheta^2 + eps)) (the paper: "negative scores are set to zero"), where g is the gradient of
    the task's loss alone, and F the EMA of its square: the penalty's own gradient is taken out (the
    authors' code and FACIL do the same; with it, an oscillating parameter fed its own score). Chosen
    by ``--rwalk_score``. Its scores (about dL_i / eps) dwarf the Fisher, so the paper rule needs a
    far smaller --reg_coef than the public one (configuration.validate and RegularizedMethod.check_stable).

    ``fisher_ema`` holds squared gradients of the model's own parameters; a folded parameter (grey
    mlp400: the sum of c input-weight slices, gradient c times a slice's) is turned into per-slice
    units (g / c, dtheta / c, F / c^2) for the score and the importance, so both are the paper
    model's."""

    score_rule = "public"

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.score_rule = getattr(self.cfg, "rwalk_score", None) or self.score_rule
        if self.score_rule not in ("public", "paper"):
            raise ValueError(f"unknown rwalk_score '{self.score_rule}'; valid: public, paper")
        self.fisher_ema: dict[str, torch.Tensor] = {}
        self.call_score: dict[str, torch.Tensor] = {}
        self.score: dict[str, torch.Tensor] | None = None
        self.steps = 0

    def train_step(self, x: torch.Tensor, y: torch.Tensor, idx: torch.Tensor | None = None,
                   extra: dict[str, torch.Tensor] | None = None):
        params = self.reg_params()
        old = {n: p.detach().clone() for n, p in params.items()} if self.score_rule == "paper" else None
        out = super().train_step(x, y, idx, extra)
        if self.steps > 0:
            self.update_fisher_and_score(params, old)
        self.steps += 1
        return out

    @torch.no_grad()
    def update_fisher_and_score(self, params: dict[str, torch.Tensor], old: dict[str, torch.Tensor] | None) -> None:
        """One step's update from the gradients left in ``p.grad`` (and the parameters before the step:
        the paper rule; its gradient is the task loss's, the penalty's gradient at ``old`` taken out)."""
        names = [n for n, p in params.items() if p.grad is not None]
        grads = {n: params[n].grad for n in names}
        if old is not None:
            pen = self.penalty.gradient(old)
            grads = {n: g - self.reg_coef * pen[n] if n in pen else g for n, g in grads.items()}
            folded = fold_counts(self.model)
            for n in names:
                c = folded.get(n, 1)
                delta, g = (params[n] - old[n]) / c, grads[n] / c
                fisher = self.fisher_ema.get(n, torch.zeros_like(delta)) / (c * c)
                gain = (-g * delta / (0.5 * fisher * delta.square() + EPS)).clamp_min_(0)
                self.call_score[n] = self.call_score.get(n, torch.zeros_like(delta)) + gain
        ema = [n for n in names if n in self.fisher_ema]
        for n in names:
            if n not in self.fisher_ema:
                self.fisher_ema[n] = grads[n].square()
        if ema:
            f, g = [self.fisher_ema[n] for n in ema], [grads[n] for n in ema]
            torch._foreach_mul_(f, 1 - ALPHA)
            torch._foreach_addcmul_(f, g, g, value=ALPHA)

    def importance(self, task_id: int, phase: str) -> dict[str, torch.Tensor]:
        params = self.reg_params()
        call = {n: self.call_score.get(n, torch.zeros_like(p)) for n, p in params.items()}
        if self.score is None:
            self.score = call
        else:
            self.score = {n: 0.5 * self.score.get(n, torch.zeros_like(p)) + 0.5 * call[n] for n, p in params.items()}
        self.call_score = {}
        folded = fold_counts(self.model)
        return {n: self.fisher_ema.get(n, torch.zeros_like(p)) / folded.get(n, 1) ** 2 + self.score[n]
                for n, p in params.items()}

    def extra_state(self) -> dict:
        cpu = lambda d: None if d is None else {n: t.cpu() for n, t in d.items()}  # noqa: E731
        return {**super().extra_state(), "fisher_ema": cpu(self.fisher_ema), "call_score": cpu(self.call_score),
                "score": cpu(self.score), "steps": self.steps}

    def load_extra_state(self, state: dict) -> None:
        super().load_extra_state(state)
        dev = lambda d: None if d is None else {n: t.to(self.device) for n, t in d.items()}  # noqa: E731
        self.fisher_ema, self.call_score = dev(state["fisher_ema"]), dev(state["call_score"])
        self.score, self.steps = dev(state["score"]), state["steps"]
