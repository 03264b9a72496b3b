"""Fine-tuning baseline: cross-entropy on stream + memory (random memory by default)."""
from __future__ import annotations

from methods import register
from methods.base import Method


@register("finetune")
class Finetune(Method):
    """Everything is the base behaviour."""

    default_memory = "random"
