"""Where the tests find real data: ../shared beside the checkout (or $RM_SHARED, laid out the same)
and the Debian package's Fashion-MNIST (or $RM_FASHION_SRC); tests skip when a path is absent."""
from __future__ import annotations

import os
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("RM_SHARED") or ROOT.parent / "shared")
MNIST_SRC = SHARED / "datasets" / "mnist"  # IDX .gz files
PAPER_COLL = SHARED / "collections" / "mnist"  # the paper's MNIST split files
FASHION_SRC = Path(os.environ.get("RM_FASHION_SRC") or "/usr/share/datasets/fashion-mnist")
