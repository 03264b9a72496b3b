"""Atomic writes: a file appears complete or not at all (temporary file, fsync, rename)."""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import IO, Callable

import numpy as np


def atomic_write(path: Path, write: Callable[[IO[bytes]], None]) -> None:
    """``write(f)`` into a temporary file beside ``path``, then rename it over ``path``; the old file
    stays intact until the new one is complete on disk."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        with open(tmp, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write(path, lambda f: f.write(text.encode()))


def write_json(path: Path, obj) -> None:
    atomic_write_text(path, json.dumps(obj, indent=1, default=_jsonable))


def write_npy(path: Path, arr) -> None:
    atomic_write(path, lambda f: np.save(f, np.asarray(arr)))


def _jsonable(o):
    if isinstance(o, (np.floating, np.integer)):
        return o.item()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"not JSON serialisable: {type(o)}")
