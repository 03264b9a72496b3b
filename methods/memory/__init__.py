"""Memory managers: given candidate indices (and a scorer or featurizer), keep a subset; they never train."""
from __future__ import annotations

from methods.memory import (  # noqa: F401 - each registers its managers
    greedy_balanced, herding, reservoir, uncertainty, uniform)
from methods.memory.base import MANAGERS, Featurizer, MemoryManager, Scorer, build_manager, model_featurizer

__all__ = ["MANAGERS", "Featurizer", "MemoryManager", "Scorer", "build_manager", "model_featurizer"]
