"""Rainbow Memory's manager: per class, samples spread over the sorted uncertainty of K perturbed views."""
from __future__ import annotations

from typing import Callable

import torch

from methods.memory.base import MemoryManager, class_balanced_random, fill_random, register_manager
from utils.data.augment import iter_uncertainty_views
from utils.data.folder import read_ahead

SCORE_CHUNK = 4096  # candidates per batch of views


@register_manager("uncertainty")
class UncertaintyMemory(MemoryManager):
    """Rainbow Memory: per class, samples spread evenly over the sorted uncertainty range."""

    needs_scorer = True

    def select(self, stream, cand, task_id, num_class, scorer):
        if task_id == 0 or scorer is None:
            return class_balanced_random(cand, self.labels, self.size, num_class)
        unc = scorer(cand)
        self.scores = unc
        return diverse_by_uncertainty(cand, unc, self.labels[cand], self.size, num_class)


def diverse_by_uncertainty(cand: torch.Tensor, unc: torch.Tensor, y: torch.Tensor, size: int,
                           num_class: int) -> torch.Tensor:
    """Per class c with n_c candidates and m = size // num_class slots: sort by uncertainty,
    take every floor(n_c/m)-th sample, first m of them; a class with n_c <= m keeps all;
    unused slots are filled at random."""
    per = size // num_class
    # sort by (class, uncertainty), stable so ties keep candidate order
    order = torch.argsort(unc, stable=True)
    order = order[torch.argsort(y[order], stable=True)]
    ys = y[order]
    counts = torch.bincount(ys, minlength=num_class)
    starts = torch.cumsum(counts, 0) - counts
    rank = torch.arange(len(order), device=cand.device) - starts[ys]
    n_c = counts[ys]
    jump = torch.clamp(n_c // max(per, 1), min=1)
    keep = (ys < num_class) & (((n_c <= per)) | ((rank % jump == 0) & (rank // jump < per)))
    chosen = cand[order[keep]]
    return fill_random(chosen, cand, size)


@torch.no_grad()
def vote_uncertainty(predict: Callable[[torch.Tensor], torch.Tensor], images: torch.Tensor, cand: torch.Tensor,
                     metric: str, n_out: int) -> tuple[torch.Tensor, int]:
    """1 - (votes of the most-voted class) / K over the K perturbed views of ``metric`` of each
    candidate (``predict``: uint8 images -> logits, in eval mode); and K."""
    votes = torch.zeros(len(cand), n_out, device=cand.device)
    k_views = 0
    chunks = [c for c in cand.split(SCORE_CHUNK) if len(c)]
    read_ahead(images, chunks)
    for s, idx in zip(range(0, len(cand), SCORE_CHUNK), chunks):
        rows = torch.arange(s, s + len(idx), device=cand.device)
        k_views = 0
        for view in iter_uncertainty_views(images[idx], metric):
            votes[rows, predict(view).argmax(1)] += 1
            k_views += 1
    return 1.0 - votes.max(1).values / max(k_views, 1), k_views
