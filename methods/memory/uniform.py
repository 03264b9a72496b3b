"""Random memories: uniform over stream + memory, and class-balanced (GDumb's)."""
from __future__ import annotations

from methods.memory.base import MemoryManager, class_balanced_random, randperm, register_manager


@register_manager("random")
class RandomMemory(MemoryManager):
    """Uniformly random subset of stream + memory."""

    def select(self, stream, cand, task_id, num_class, scorer):
        return cand[randperm(len(cand), cand.device)[: self.size]]


@register_manager("class_balanced")
class ClassBalancedMemory(MemoryManager):
    """Class-balanced random memory (GDumb's)."""

    def select(self, stream, cand, task_id, num_class, scorer):
        return class_balanced_random(cand, self.labels, self.size, num_class)
