"""GDumb: class-balanced memory updated first, then a re-initialised model trained on the memory only."""
from __future__ import annotations

from methods import register
from methods.base import FitResult, Method, make_optimizer


@register("gdumb")
class GDumb(Method):
    """As the public code runs it in any stream mode: ignore the stream for training; per task,
    update the memory (class-balanced random), rebuild the whole model (its initial head: a
    bias-free linear layer + BatchNorm), and train ``n_epoch`` epochs on the memory in batches
    of ``batchsize`` (last partial batch dropped)."""

    default_memory = "class_balanced"

    def before_task(self, task_id, stream, test_idx) -> None:
        super().before_task(task_id, stream, test_idx)
        self._memory_done = False

    def replace_head(self, n_out: int) -> None:
        """The model is rebuilt before training, so the head is not replaced here."""

    def update_memory(self, task_id: int) -> None:
        if not self._memory_done:
            super().update_memory(task_id)
            self._memory_done = True

    def train_stream(self, task_id: int) -> FitResult:
        return FitResult(best_acc=0.0)

    def train_memory(self, task_id: int) -> FitResult:
        self.update_memory(task_id)
        self.model = self.new_model(max(self.num_learning_class, max(self.exposed, default=-1) + 1))
        self.optimizer, self.scheduler = make_optimizer(self.cfg.opt_name, self.cfg.lr, self.model, self.cfg.sched_name)
        return self.fit(task_id, self.cfg.n_epoch, "memory")

    def train_offline(self, task_id: int) -> FitResult:
        return self.train_memory(task_id)
