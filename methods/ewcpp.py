"""EWC++ (Chaudhry et al. 2018; the CLIB code's): ER plus an online-Fisher penalty on the weights outside the head."""
from __future__ import annotations

import torch

from methods import register
from methods.er import ER
from methods.replay_rules import EWCPenalty, ewcpp_update


@register("ewc++")
class EWCpp(ER):
    """ER + --reg_coef * sum F (theta - theta*)^2 over the parameters outside the head. After each step
    F <- 0.5 F + 0.5 g^2 (the first step: g^2); at each task end F and theta* fill the one slot. The CLIB
    code reads the gradients after ``zero_grad()``, so its F stays zero, its penalty is exactly zero and
    ewc++ trains as er does, bit for bit (i-Blurry's default: the zero penalty is not computed); elsewhere,
    and with --as_intended, F is read after the backward pass, so it updates and the penalty acts. With
    mlp400's Adam fold (grey images) the one input weight stands for 3 slices that share their gradient, F
    and drift: its penalty counts 3 times, its gradient once (each slice's own)."""

    def __init__(self, cfg, data, device, writer=None) -> None:
        super().__init__(cfg, data, device, writer)
        self.fisher: dict[str, torch.Tensor] = {}  # F of every body parameter with a gradient so far
        self.anchor: dict[str, torch.Tensor] = {}  # theta* at the last task end
        self.importance: dict[str, torch.Tensor] = {}  # F at the last task end
        self._body: tuple[torch.nn.Module | None, dict[str, torch.nn.Parameter]] = (None, {})
        self._terms: tuple[tuple | None, tuple] = (None, ())  # penalty_terms' lists, with what they were made of

    def body_params(self) -> dict[str, torch.nn.Parameter]:
        """The parameters outside the head (kept per model: a grown head leaves them as they are)."""
        if self._body[0] is not self.model:
            self._body = (self.model, {n: p for n, p in self.model.named_parameters()
                                       if not n.startswith("fc.") and p.requires_grad})
        return self._body[1]

    def extra_loss(self, x: torch.Tensor, y: torch.Tensor, logits: torch.Tensor) -> torch.Tensor | None:
        if not self.importance:
            return None
        return EWCPenalty.apply(self.cfg.reg_coef, *self.penalty_terms())

    def penalty_terms(self) -> tuple:
        """EWCPenalty's arguments after reg: Fishers, anchors, slice counts, then the parameters; listed again
        only when the slot or the model is another object."""
        key, made = (self.importance, self.anchor, self.model), self._terms[0]
        if made is None or any(a is not b for a, b in zip(made, key)):
            params = self.body_params()
            slices = getattr(self.model, "per_slice", dict)()  # mlp400's Adam fold: one input weight for 3 slices
            names = list(self.importance)
            self._terms = (key, ([self.importance[n] for n in names], [self.anchor[n] for n in names],
                                 [slices.get(n, 1) for n in names], *[params[n] for n in names]))
        return self._terms[1]

    def after_step(self) -> None:
        """ER's lr decay, then the online Fisher update from this step's gradients, still there after the
        optimizer's step (the CLIB code's F stays zero: none)."""
        super().after_step()
        if self.follow != "clib":
            ewcpp_update(self.fisher, self.body_params())

    def after_task(self, task_id: int) -> None:
        """theta* and F of this task end fill the one slot (online EWC)."""
        if self.fisher:
            params = self.body_params()
            self.anchor = {n: params[n].detach().clone() for n in self.fisher}
            self.importance = {n: f.clone() for n, f in self.fisher.items()}

    def extra_state(self) -> dict:
        cpu = lambda d: {n: t.cpu() for n, t in d.items()}  # noqa: E731
        return {"fisher": cpu(self.fisher), "anchor": cpu(self.anchor), "importance": cpu(self.importance)}

    def load_extra_state(self, state: dict) -> None:
        dev = lambda d: {n: t.to(self.device) for n, t in d.items()}  # noqa: E731
        self.fisher, self.anchor, self.importance = dev(state["fisher"]), dev(state["anchor"]), dev(state["importance"])
