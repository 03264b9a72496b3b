"""Reading MNIST-style IDX files (plain or .gz), checked against their headers."""
from __future__ import annotations

import gzip
from pathlib import Path
from typing import Optional

import numpy as np

from utils.prepare.errors import PrepareError

IDX_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
MAGIC_IMAGES = 0x00000803
MAGIC_LABELS = 0x00000801
IMAGE_SHAPE = (28, 28)
N_CLASSES = 10


def _read_bytes(path: Path) -> bytes:
    """Return the (decompressed) content of an IDX file, `.gz` or plain."""
    try:
        if path.suffix == ".gz":
            with gzip.open(path, "rb") as fh:
                return fh.read()
        return path.read_bytes()
    except (OSError, EOFError) as exc:  # gzip.BadGzipFile is an OSError
        raise PrepareError(f"{path}: cannot read ({exc}); the file is damaged or truncated, "
                           "download it again") from exc


def read_idx(path: Path | str) -> np.ndarray:
    """Parse an IDX file of unsigned bytes (images 0x803 or labels 0x801) into a uint8 array."""
    path = Path(path)
    data = _read_bytes(path)
    if len(data) < 4:
        raise PrepareError(f"{path}: file is truncated ({len(data)} bytes, no IDX header); "
                           "download it again")
    magic = int.from_bytes(data[:4], "big")
    if magic not in (MAGIC_IMAGES, MAGIC_LABELS):
        raise PrepareError(f"{path}: bad magic number 0x{magic:08x} (expected 0x{MAGIC_IMAGES:08x} "
                           f"for images or 0x{MAGIC_LABELS:08x} for labels); this is not an "
                           "MNIST-style IDX file of unsigned bytes")
    ndim = magic & 0xFF
    header = 4 + 4 * ndim
    if len(data) < header:
        raise PrepareError(f"{path}: file is truncated inside the header; download it again")
    dims = tuple(int.from_bytes(data[4 + 4 * i:8 + 4 * i], "big") for i in range(ndim))
    expected = header + int(np.prod(dims, dtype=np.int64))
    if len(data) != expected:
        what = "truncated" if len(data) < expected else "longer than its header says"
        raise PrepareError(f"{path}: file is {what} ({len(data)} bytes, header dims {dims} need "
                           f"{expected}); download it again")
    return np.frombuffer(data, dtype=np.uint8, offset=header).reshape(dims)


def _idx_path(source: Path, base: str) -> Path:
    """Locate `base` (plain preferred) or `base.gz` in `source`."""
    for candidate in (source / base, source / f"{base}.gz"):
        if candidate.is_file():
            return candidate
    raise PrepareError(f"{source / base}[.gz]: file not found; put the four IDX files "
                       f"({', '.join(b for pair in IDX_FILES.values() for b in pair)}, plain or .gz) "
                       "in that folder, or omit --source to download them")


def _check_images(path: Path, images: np.ndarray) -> None:
    if images.ndim != 3 or images.shape[1:] != IMAGE_SHAPE:
        raise PrepareError(f"{path}: expected images of shape [N, 28, 28], found {list(images.shape)}; "
                           "is this the images file?")


def _check_labels(path: Path, labels: np.ndarray) -> None:
    if labels.ndim != 1:
        raise PrepareError(f"{path}: expected a 1-d labels file, found shape {list(labels.shape)}; "
                           "is this the labels file?")
    bad = np.flatnonzero(labels >= N_CLASSES)
    if bad.size:
        raise PrepareError(f"{path}: {bad.size} labels outside 0..9 (first at index {bad[0]}: "
                           f"{labels[bad[0]]}); the file is not an MNIST-style labels file")


def read_split(source: Path | str, split: str,
               expected_count: Optional[int] = None) -> tuple[np.ndarray, np.ndarray]:
    """Read and validate the images [N,28,28] and labels [N] of one split from `source`."""
    source = Path(source)
    img_path, lbl_path = (_idx_path(source, base) for base in IDX_FILES[split])
    images, labels = read_idx(img_path), read_idx(lbl_path)
    _check_images(img_path, images)
    _check_labels(lbl_path, labels)
    if len(images) != len(labels):
        raise PrepareError(f"{img_path}: {len(images)} images but {lbl_path.name} has {len(labels)} "
                           "labels; the two files do not belong together")
    if expected_count is not None and len(images) != expected_count:
        raise PrepareError(f"{img_path}: {len(images)} samples, expected {expected_count} for the "
                           f"full {split} set; use the complete official files (or relax the "
                           "count check for a custom set)")
    return images, labels
