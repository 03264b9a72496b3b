"""Method registry: ``@register("rm")`` on a class (``@register("rm", iblurry=True)`` for its i-Blurry
protocol version); ``build_method(name, ..., iblurry=...)`` builds it."""
from __future__ import annotations

import importlib
import pkgutil
from pathlib import Path

REGISTRY: dict[str, type] = {}  # the blurry/disjoint protocol (the CVPR'21 code)
IBLURRY: dict[str, type] = {}  # the sample-wise i-Blurry protocol (the CLIB code)
_NOT_METHODS = {"base", "distill", "engine", "memory", "regularization"}  # hold no method


def register(name: str, iblurry: bool = False):
    """Class decorator adding a method to the registry of its protocol under ``name``."""
    def deco(cls):
        (IBLURRY if iblurry else REGISTRY)[name] = cls
        cls.name = name
        return cls
    return deco


def _load_all() -> None:
    """Import every module of this package (each registers its methods)."""
    for info in pkgutil.iter_modules([str(Path(__file__).parent)]):
        if info.name not in _NOT_METHODS and not info.name.startswith("_"):
            importlib.import_module(f"methods.{info.name}")


def method_names(iblurry: bool | None = None) -> list[str]:
    """The methods of one protocol (``iblurry`` True/False), or of either (None)."""
    _load_all()
    if iblurry is None:
        return sorted(set(REGISTRY) | set(IBLURRY))
    return sorted(IBLURRY if iblurry else REGISTRY)


def get_method_class(name: str, iblurry: bool = False) -> type:
    """The class registered under ``name`` for the protocol; unknown names list the valid ones."""
    _load_all()
    reg = IBLURRY if iblurry else REGISTRY
    if name not in reg:
        raise ValueError(f"unknown mode '{name}' in the {'i-Blurry' if iblurry else 'blurry/disjoint'} protocol; "
                         f"valid: {', '.join(sorted(reg))}")
    return reg[name]


def build_method(name: str, *args, iblurry: bool = False, **kwargs):
    return get_method_class(name, iblurry)(*args, **kwargs)
