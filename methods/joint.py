"""Joint training: one task holding all the training data (the upper bound behind I_last)."""
from __future__ import annotations

import torch

from methods import register
from methods.base import Method


@register("joint")
class Joint(Method):
    """The public code's joint mode: the model keeps its initial head sized to every class of
    the dataset (bias-free linear + BatchNorm), trains ``n_epoch`` epochs on all the data with
    no memory, and is evaluated on every test sample."""

    default_memory = "random"  # never filled
    stream_pass = False  # never trains on the stream itself
    single_task = True  # every task merged into one

    def __init__(self, cfg, data, device, writer=None) -> None:
        super().__init__(cfg, data, device, writer)
        self.model = self.new_model(data.n_classes)
        self.build_optimizer()

    def training_calls(self, online: bool) -> list[tuple[str, int]]:
        return [("offline", self.cfg.n_epoch)]

    def before_task(self, task_id: int, stream: torch.Tensor, test_idx: torch.Tensor,
                    shown: list[int] | None = None) -> None:
        self.stream = stream
        self.exposed |= set(range(self.data.n_classes))

    def update_memory(self, task_id: int) -> None:
        """Joint keeps no memory."""
