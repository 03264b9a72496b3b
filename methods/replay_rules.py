"""The loss and selection rules of the online replay methods (SPEC section 12), as pure functions:
DER++'s loss, EWC++'s online Fisher, and MIR's retrieval by interference."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call

DERPP_ALPHA = 0.2  # mammoth's DER++ on seq-cifar10 with a 500-sample buffer: logit matching ...
DERPP_BETA = 0.5  # ... and replayed labels
EWCPP_ALPHA = 0.5  # F <- (1 - alpha) F + alpha g^2 after every step


def derpp_loss(logits: torch.Tensor, y: torch.Tensor, buf_logits: torch.Tensor, buf_targets: torch.Tensor,
               buf_logits2: torch.Tensor, buf_y2: torch.Tensor, alpha: float = DERPP_ALPHA,
               beta: float = DERPP_BETA,
               width: torch.Tensor | None = None) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """DER++: CE on the stream + alpha * MSE between the model's logits on one memory draw and the logits
    stored with it + beta * CE on a second, independent memory draw with its stored labels. The stored
    logits may have fewer columns than the head has now: only those columns are matched; ``width`` (per
    row) says how many of a row's stored columns are real (the head's size when it was stored)."""
    ce = F.cross_entropy(logits, y)
    k = buf_targets.shape[1]
    if width is None:
        mse = F.mse_loss(buf_logits[:, :k], buf_targets)
    else:
        mask = (torch.arange(k, device=width.device) < width[:, None]).to(buf_targets.dtype)
        mse = ((buf_logits[:, :k] - buf_targets).square() * mask).sum() / mask.sum().clamp(min=1)
    ce_buf = F.cross_entropy(buf_logits2, buf_y2)
    return ce + alpha * mse + beta * ce_buf, {"ce": ce, "mse": mse, "ce_buffer": ce_buf}


@torch.no_grad()
def ewcpp_update(fisher: dict[str, torch.Tensor], params: dict[str, nn.Parameter],
                 alpha: float = EWCPP_ALPHA) -> int:
    """EWC++'s online Fisher after a step, in place: F <- (1 - alpha) F + alpha g^2 for every parameter
    with a gradient; a parameter without a Fisher yet takes g^2 (the CLIB code's first update, which it
    detects as a Fisher still all zero). Returns how many were updated. The step has spent the gradients:
    they are squared where they lie (``g * g``, which is ``g.pow(2)``), with no new memory. The CLIB code
    reads the gradients after ``zero_grad()``: none are left, so its Fisher never updates."""
    live = [(name, p.grad) for name, p in params.items() if p.grad is not None]
    if not live:
        return 0
    g2 = [g for _, g in live]
    torch._foreach_mul_(g2, g2)  # g^2 in the gradients' own memory
    fs, gs = [], []  # the Fishers that update, and their g^2
    for (name, _), g in zip(live, g2):
        f = fisher.get(name)
        if f is None or f.shape != g.shape:
            fisher[name] = g.clone()  # its own memory: a compiled step may reuse the gradients'
        else:
            fs.append(f)
            gs.append(g)
    if fs:  # F.mul_(1 - alpha).add_(g2, alpha=alpha), one call for every parameter
        torch._foreach_mul_(fs, 1 - alpha)
        torch._foreach_add_(fs, gs, alpha=alpha)
    return len(live)


class EWCPenalty(torch.autograd.Function):
    """EWC's penalty ``reg * sum_n c_n * sum(F_n * (p_n - a_n)^2)`` and its gradient ``2 reg F_n (p_n - a_n)``
    (``c_n``: how many slices a folded weight stands for; its gradient is one slice's). Every element is
    rounded as in autograd's graph of that expression, and every sum is taken in its order, so the bits are
    the same; in fewer passes over memory. ``mse_loss(p, a)`` is ``(p - a) * (p - a)``, which is autograd's
    ``(p - a).square()``, and ``mse_loss_backward(G, p, a)`` is ``2 (p - a) G``, the product autograd's
    square backward forms as ``G (2 (p - a))`` (a product of two rounded factors does not depend on their
    order). Apply it as ``EWCPenalty.apply(reg, fishers, anchors, counts, *params)``."""

    @staticmethod
    def forward(ctx, reg: float, fishers: list[torch.Tensor], anchors: list[torch.Tensor], counts: list[int],
                *params: torch.Tensor) -> torch.Tensor:
        total = None
        for f, a, p, c in zip(fishers, anchors, params, counts):
            t = F.mse_loss(p, a, reduction="none").mul_(f).sum()  # sum(F (p - a)^2); F d^2 = d^2 F
            t = t * c if c != 1 else t
            total = t if total is None else total + t
        ctx.reg, ctx.fishers, ctx.anchors = reg, fishers, anchors
        ctx.save_for_backward(*params)
        return total * reg

    @staticmethod
    def backward(ctx, g: torch.Tensor):  # noqa: ANN205 (autograd's tuple)
        grads = torch._foreach_mul(ctx.fishers, g * ctx.reg)  # d/d(F d^2) = g reg F
        for G, p, a in zip(grads, ctx.saved_tensors, ctx.anchors):  # G <- (2 (p - a)) G, reduction 0 (none)
            torch.ops.aten.mse_loss_backward.grad_input(G, p, a, 0, grad_input=G)
        return (None, None, None, None, *grads)


def mir_scores(model: nn.Module, x: torch.Tensor, y: torch.Tensor, cand_x: torch.Tensor, cand_y: torch.Tensor,
               lr: float, bn_drift: bool = True) -> torch.Tensor:
    """MIR's interference of each candidate: its cross-entropy after a virtual SGD step (learning rate
    ``lr``) on the stream batch (x, y), minus its cross-entropy now. The gradient is taken in train mode.
    ``bn_drift`` (the CLIB code): the scoring runs in train mode too, so batch norm normalises with the
    candidates' batch, and the running statistics move with the virtual step's forward pass and the
    current model's pass over the candidates (the virtually stepped model is a copy: its pass moves a copy);
    False: the running statistics are left as they were and the candidates are scored in eval mode. The
    parameters are never changed."""
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    buffers = dict(model.named_buffers())
    saved = None if bn_drift else {n: b.clone() for n, b in buffers.items()}
    was_training = model.training
    try:
        model.train()  # the virtual step's gradient, as the real step computes it (the model's own forward pass)
        loss = F.cross_entropy(model(x), y)
        grads = torch.autograd.grad(loss, [p for _, p in named])
        if saved is not None:  # that pass moved the running statistics: put them back
            for n, b in buffers.items():
                b.copy_(saved[n])
        model.train(bn_drift)
        with torch.no_grad():
            virtual = {n: p - lr * g for (n, p), g in zip(named, grads)}
            now = F.cross_entropy(model(cand_x), cand_y, reduction="none")
            copies = {n: b.clone() for n, b in buffers.items()} if bn_drift else buffers
            after = F.cross_entropy(functional_call(model, (virtual, copies), (cand_x,)), cand_y, reduction="none")
    finally:
        model.train(was_training)
    return after - now


def mir_select(scores: torch.Tensor, k: int) -> torch.Tensor:
    """Positions of the ``k`` most interfered candidates (largest score first; ties: the earlier one)."""
    k = min(k, len(scores))
    order = torch.argsort(-scores, stable=True)
    return order[:k]
