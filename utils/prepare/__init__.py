"""Dataset preparation (``python -m utils.prepare``): IDX and CIFAR files -> <data_dir>/<name>/{train,test}/<class>/."""
from __future__ import annotations

from utils.prepare.build import prepare
from utils.prepare.cli import main
from utils.prepare.errors import PrepareError

__all__ = ["PrepareError", "main", "prepare"]
