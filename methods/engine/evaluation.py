"""Test accuracy of a method on a set of test indices: top-k, mean loss and per-class accuracy."""
from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F

from utils.data.folder import read_ahead

EVAL_BATCH = 1024

Scores = Callable[[torch.Tensor], torch.Tensor]  # uint8 images -> class scores [n, n_out]
Predict = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]  # (scores, uint8 images) -> labels [n]


@torch.no_grad()
def evaluate(scores: Scores, predict: Predict, images: torch.Tensor, labels: torch.Tensor, test_idx: torch.Tensor,
             n_classes: int, topk: int, reduce: Callable[[torch.Tensor], torch.Tensor] | None = None,
             n_total: int | None = None) -> dict:
    """Accuracy (top-k, %), mean loss and per-class accuracy (%; None for absent classes) of the
    samples ``test_idx``; one host synchronisation at the end. ``reduce`` (torchrun: a sum over the
    ranks, each of which evaluated its share of the ``n_total`` samples) combines the counts."""
    device = labels.device
    correct = torch.zeros((), device=device, dtype=torch.long)
    loss_sum = torch.zeros((), device=device)
    cls_correct = torch.zeros(n_classes, device=device, dtype=torch.long)
    cls_total = torch.zeros(n_classes, device=device, dtype=torch.long)
    chunks = [c for c in test_idx.split(EVAL_BATCH) if len(c)]
    read_ahead(images, chunks)
    for idx in chunks:
        y = labels[idx]
        x = images[idx]
        logits = scores(x)
        # classes the head does not cover yet (blurry runs with a small --n_init_cls) count as
        # wrong and stay out of the loss
        known = y < logits.shape[1]
        ce = F.cross_entropy(logits, y.clamp_max(logits.shape[1] - 1), reduction="none")
        loss_sum += (ce * known).sum()
        top = logits.topk(min(topk, logits.shape[1]), 1).indices
        correct += (top == y[:, None]).any(1).sum()
        pred = predict(logits, x)
        cls_total += torch.bincount(y, minlength=n_classes)
        cls_correct += torch.bincount(y[pred == y], minlength=n_classes)
    if reduce is not None:  # counts are exact in float64 up to 2^53
        packed = reduce(torch.cat([torch.stack([correct.double(), loss_sum.double()]), cls_correct.double(),
                                   cls_total.double()]))
        correct, loss_sum = packed[0].round().long(), packed[1]
        cls_correct, cls_total = packed[2:2 + n_classes].round().long(), packed[2 + n_classes:].round().long()
    n = max(len(test_idx) if n_total is None else n_total, 1)
    tot = cls_total.tolist()
    cor = cls_correct.tolist()
    return {"avg_acc": 100.0 * correct.item() / n, "avg_loss": loss_sum.item() / n,
            "cls_acc": [100.0 * c / t if t else None for c, t in zip(cor, tot)]}
