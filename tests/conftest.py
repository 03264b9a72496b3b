"""Shared fixtures: small real-data subsets prepared once per session (skipped without the data)."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.paths import FASHION_SRC, MNIST_SRC, ROOT

os.chdir(ROOT)  # main.py's relative defaults


def _subset(tmp_path_factory, name: str, src: Path, per_class: int) -> Path:
    if not (src / "train-images-idx3-ubyte.gz").is_file():
        pytest.skip(f"{name} IDX files not found in {src}")
    from utils.prepare import prepare
    data_dir = tmp_path_factory.mktemp(f"{name}_data")
    prepare(name, source=str(src), data_dir=str(data_dir), per_class=per_class)
    return data_dir


@pytest.fixture(scope="session")
def fashion_dir(tmp_path_factory) -> Path:
    """Fashion-MNIST, first 300 train / 100 test images per class, from the Debian package."""
    return _subset(tmp_path_factory, "fashion_mnist", FASHION_SRC, 300)


@pytest.fixture(scope="session")
def mnist_dir(tmp_path_factory) -> Path:
    """MNIST, first 300 train / 100 test images per class, from ../shared."""
    return _subset(tmp_path_factory, "mnist", MNIST_SRC, 300)


@pytest.fixture(scope="session")
def mnist100_dir(tmp_path_factory) -> Path:
    """MNIST, first 100 train / 100 test images per class, from ../shared (the i-Blurry golden suite)."""
    return _subset(tmp_path_factory, "mnist", MNIST_SRC, 100)


@pytest.fixture
def one_thread():
    """One intra-op thread: mlp400's tiny ops only lose from two threads, badly on a busy 2-core CPU."""
    import torch
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
