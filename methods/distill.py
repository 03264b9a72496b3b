"""Knowledge distillation with a temperature (soft-target cross-entropy), shared by the baselines."""
from __future__ import annotations

import torch


def kd_loss(old_logits: torch.Tensor, new_logits: torch.Tensor, T: float = 2.0, t2_scale: bool = False) -> torch.Tensor:
    """Batch mean of -sum_c softmax(old/T)_c * log_softmax(new/T)_c over the old model's classes.

    ``new_logits`` is cut to the old model's width. The BiC public code uses no T^2 factor
    (``t2_scale=False``); Hinton et al.'s scaling multiplies the loss by T^2.
    """
    new = new_logits[:, : old_logits.shape[1]]
    target = torch.softmax(old_logits.detach() / T, dim=1)
    loss = -(target * torch.log_softmax(new / T, dim=1)).sum(1).mean()
    return loss * (T * T) if t2_scale else loss
