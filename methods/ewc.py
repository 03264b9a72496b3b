"""EWC baseline (the public code's methods/regularization.py EWC): CE + reg_coef * Fisher-weighted drift."""
from __future__ import annotations

import logging
import time

import torch

from methods import register
from methods.regularization import RegularizedMethod

logger = logging.getLogger("rm")


@register("ewc")
class EWC(RegularizedMethod):
    """After every training call: F = diagonal Fisher over that call's data (squared mini-batch
    gradients of the CE at the predicted labels plus the current penalty, eval mode, training
    augmentation, weighted batch/data size); anchors = the parameters at that moment."""

    def importance(self, task_id: int, phase: str) -> dict[str, torch.Tensor]:
        t0 = time.perf_counter()
        fisher = self.fisher(phase)
        logger.info("EWC: Fisher after task %d (%s) over %d samples in %.2f s", task_id, phase,
                    len(self.call_pool(phase)), time.perf_counter() - t0)
        return fisher
