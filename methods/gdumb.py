"""GDumb: class-balanced memory updated first, then a re-initialised model trained on the memory only."""
from __future__ import annotations

from methods import register
from methods.base import Method


@register("gdumb")
class GDumb(Method):
    """As the public code runs it in any stream mode: ignore the stream for training; per task,
    update the memory (class-balanced random), rebuild the whole model (its initial head: a
    bias-free linear layer + BatchNorm), and train ``n_epoch`` epochs on the memory in batches
    of ``batchsize`` (last partial batch dropped)."""

    default_memory = "class_balanced"
    stream_pass = False  # never trains on the stream itself

    def training_calls(self, online: bool) -> list[tuple[str, int]]:
        """Online or offline: one call on the memory (updated before it)."""
        return [("memory", self.cfg.n_epoch)]

    def replace_head(self, n_out: int) -> None:
        """The model is rebuilt before training, so the head is not replaced here."""

    def before_fit(self, phase: str) -> None:
        self.model = self.new_model(self.head_size())
        self.build_optimizer()
