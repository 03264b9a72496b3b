"""Method registry: ``@register("rm")`` on a class; ``build_method(name, ...)`` builds it."""
from __future__ import annotations

import importlib

REGISTRY: dict[str, type] = {}
_MODULES = ("finetune", "rm")


def register(name: str):
    """Class decorator adding a method to the registry under ``name``."""
    def deco(cls):
        REGISTRY[name] = cls
        cls.name = name
        return cls
    return deco


def _load_all() -> None:
    for m in _MODULES:
        importlib.import_module(f"methods.{m}")


def method_names() -> list[str]:
    _load_all()
    return sorted(REGISTRY)


def get_method_class(name: str) -> type:
    """The class registered under ``name``; unknown names list the valid ones."""
    _load_all()
    if name not in REGISTRY:
        raise ValueError(f"unknown mode '{name}'; valid: {', '.join(sorted(REGISTRY))}")
    return REGISTRY[name]


def build_method(name: str, *args, **kwargs):
    return get_method_class(name)(*args, **kwargs)
