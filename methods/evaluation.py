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
             n_classes: int, topk: int) -> dict:
    """Accuracy (top-k, %), mean loss and per-class accuracy (%; None for absent classes) of the
    samples ``test_idx``; one host synchronisation at the end."""
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
    n = max(len(test_idx), 1)
    tot = cls_total.tolist()
    cor = cls_correct.tolist()
    return {"avg_acc": 100.0 * correct.item() / n, "avg_loss": loss_sum.item() / n,
            "cls_acc": [100.0 * c / t if t else None for c, t in zip(cor, tot)]}
