"""Joint training: one task holding all the training data (the upper bound behind I_last)."""
from __future__ import annotations

from methods import register
from methods.base import FitResult, Method, make_optimizer


@register("joint")
class Joint(Method):
    """The public code's joint mode: the model keeps its initial head sized to every class of
    the dataset (bias-free linear + BatchNorm), trains ``n_epoch`` epochs on all the data with
    no memory, and is evaluated on every test sample."""

    default_memory = "random"  # never filled
    single_task = True  # main.py merges every task into one

    def __init__(self, cfg, data, device, writer=None) -> None:
        super().__init__(cfg, data, device, writer)
        self.model = self.new_model(data.n_classes)
        self.optimizer, self.scheduler = make_optimizer(cfg.opt_name, cfg.lr, self.model, cfg.sched_name)

    def before_task(self, task_id, stream, test_idx) -> None:
        self.stream = stream
        self.test_idx = test_idx
        self.exposed |= set(range(self.data.n_classes))

    def update_memory(self, task_id: int) -> None:
        """Joint keeps no memory."""

    def train_stream(self, task_id: int) -> FitResult:
        return FitResult(best_acc=0.0)

    def train_memory(self, task_id: int) -> FitResult:
        return self.fit(task_id, self.cfg.n_epoch, "offline")

    def train_offline(self, task_id: int) -> FitResult:
        return self.fit(task_id, self.cfg.n_epoch, "offline")
