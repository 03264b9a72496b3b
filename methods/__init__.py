"""Method registry: ``@register("rm")`` on a class; ``build_method(name, ...)`` builds it. One class per method,
run in every setting: the protocol belongs to the trainer (methods.engine), and a public code's quirks in its
setting are the method's flags (``cfg.follow``: "cvpr21", "clib" or "paper")."""
from __future__ import annotations

import importlib
import pkgutil
from pathlib import Path

REGISTRY: dict[str, type] = {}
_NOT_METHODS = {"base", "base_head", "base_scoring", "base_state", "distill", "engine", "memory",
                "regularization", "replay"}  # hold no method


def register(name: str):
    """Class decorator adding a method to the registry under ``name``."""
    def deco(cls):
        REGISTRY[name] = cls
        cls.name = name
        return cls
    return deco


def _load_all() -> None:
    """Import every module of this package (each registers its methods)."""
    for info in pkgutil.iter_modules([str(Path(__file__).parent)]):
        if info.name not in _NOT_METHODS and not info.name.endswith("_rules") and not info.name.startswith("_"):
            importlib.import_module(f"methods.{info.name}")


def method_names() -> list[str]:
    """Every registered method."""
    _load_all()
    return sorted(REGISTRY)


def get_method_class(name: str) -> type:
    """The class registered under ``name``; unknown names list the valid ones."""
    _load_all()
    if name not in REGISTRY:
        raise ValueError(f"unknown mode '{name}'; valid: {', '.join(sorted(REGISTRY))}")
    return REGISTRY[name]


def build_method(name: str, cfg, *args, **kwargs):
    """The method ``name`` in the form that ``cfg.follow`` asks for (``Method.form``)."""
    return get_method_class(name).form(getattr(cfg, "follow", "cvpr21"))(cfg, *args, **kwargs)
