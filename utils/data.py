"""Image folders decoded once into a cached uint8 tensor [N,C,H,W] that lives on the device."""
from __future__ import annotations

import hashlib
import logging
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from tqdm import tqdm

logger = logging.getLogger(__name__)

CACHE_VERSION = 1
IMAGE_EXTS = (".png", ".jpg", ".jpeg", ".bmp", ".ppm", ".pgm", ".tif", ".tiff", ".webp")

# mean, std, input size, model, classes. The public code uses MNIST's statistics for
# Fashion-MNIST as well; so do we.
STATS = {
    "mnist": ((0.1307,), (0.3081,), 28),
    "fashion_mnist": ((0.1307,), (0.3081,), 28),
    "cifar10": ((0.4914, 0.4822, 0.4465), (0.2023, 0.1994, 0.2010), 32),
    "cifar100": ((0.5071, 0.4867, 0.4408), (0.2675, 0.2565, 0.2761), 32),
    "imagenet": ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225), 224),
}


class DataError(Exception):
    """A dataset that is missing, empty, corrupt or inconsistent; the message says what to do."""


@dataclass
class ImageSet:
    """One split of an image folder: pixels, relative file names and folder classes."""

    images: torch.Tensor  # uint8 [N, C, H, W]
    files: list[str]  # "train/<class>/<file>"
    classes: list[str]  # sorted class folder names
    folder_label: torch.Tensor  # long [N], index into classes
    index: dict[str, int] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not self.index:
            self.index = {f: i for i, f in enumerate(self.files)}

    def __len__(self) -> int:
        return len(self.files)

    def to(self, device: torch.device) -> "ImageSet":
        self.images = self.images.to(device)
        self.folder_label = self.folder_label.to(device)
        return self

    def class_files(self) -> dict[str, list[str]]:
        out: dict[str, list[str]] = {c: [] for c in self.classes}
        for f in self.files:
            out[f.split("/")[1]].append(f)
        return out


def dataset_missing_message(root: Path, name: str) -> str:
    hint = ""
    if name in ("mnist", "fashion_mnist"):
        hint = f" Prepare it with: python -m utils.prepare --dataset {name}"
    elif name in ("cifar10", "cifar100"):
        hint = f" Prepare it with: python -m utils.prepare --dataset {name}"
    return (f"dataset folder {root} not found (expected {root}/train/<class>/<image> and "
            f"{root}/test/<class>/<image>).{hint}")


def list_split(root: Path, split: str) -> tuple[list[str], list[str]]:
    """Sorted class folders and relative image paths of one split; errors name the problem."""
    split_dir = root / split
    if not split_dir.is_dir():
        raise DataError(f"missing split folder {split_dir}")
    classes = sorted(d.name for d in os.scandir(split_dir) if d.is_dir() and not d.name.startswith("."))
    if not classes:
        raise DataError(f"{split_dir} has no class folders")
    files: list[str] = []
    for c in classes:
        names = sorted(e.name for e in os.scandir(split_dir / c)
                       if e.is_file() and e.name.lower().endswith(IMAGE_EXTS))
        if not names:
            raise DataError(f"class folder {split_dir / c} holds no images")
        files += [f"{split}/{c}/{n}" for n in names]
    return classes, files


def fingerprint(root: Path, files: list[str]) -> str:
    """Changes whenever an image is added, removed, resized or touched."""
    h = hashlib.sha1()
    for f in files:
        st = os.stat(root / f)
        h.update(f"{f}:{st.st_size}:{st.st_mtime_ns};".encode())
    return h.hexdigest()


def _decode(path: Path, mode: str, size: int | None) -> np.ndarray:
    try:
        with Image.open(path) as im:
            im = im.convert(mode)
            if size is not None and im.size != (size, size):
                im = im.resize((size, size), Image.BILINEAR)
            arr = np.asarray(im, dtype=np.uint8)
    except Exception as e:  # PIL raises many types for broken files
        raise DataError(f"cannot read image {path}: {e.__class__.__name__}: {e}. "
                        "Re-create it (re-run utils.prepare) or remove it.") from None
    return arr


def decode_split(root: Path, split: str, size: int | None = None) -> ImageSet:
    """Decode every image of ``root/split`` (no cache)."""
    classes, files = list_split(root, split)
    with Image.open(root / files[0]) as im0:
        mode = "L" if im0.mode in ("L", "1", "I", "I;16", "LA") else "RGB"
        first_size = im0.size
    if size is None and first_size[0] != first_size[1]:
        size = max(first_size)
    arrs = []
    quiet = not sys.stderr.isatty()
    for f in tqdm(files, desc=f"decode {root.name}/{split}", disable=quiet, leave=False):
        arrs.append(_decode(root / f, mode, size))
    shapes = [a.shape[:2] for a in arrs]
    if size is None and len(set(shapes)) > 1:
        common = max(set(shapes), key=shapes.count)
        odd = [(f, s) for f, s in zip(files, shapes) if s != common]
        more = f" (and {len(odd) - 1} more)" if len(odd) > 1 else ""
        raise DataError(f"images of different sizes in {root / split}: most are {common[1]}x{common[0]}, but image "
                        f"{root / odd[0][0]} is {odd[0][1][1]}x{odd[0][1][0]}{more}; resize them to one size "
                        f"or remove them")
    x = np.stack(arrs)
    x = x[:, None] if x.ndim == 3 else x.transpose(0, 3, 1, 2)
    cls_idx = {c: i for i, c in enumerate(classes)}
    labels = torch.tensor([cls_idx[f.split("/")[1]] for f in files], dtype=torch.long)
    return ImageSet(torch.from_numpy(np.ascontiguousarray(x)), files, classes, labels)


def load_split(root: Path, split: str, size: int | None = None, use_cache: bool = True) -> ImageSet:
    """Decode a split once and cache it under ``root/.cache``; the cache is rebuilt when files change."""
    classes, files = list_split(root, split)
    fp = fingerprint(root, files)
    cache = root / ".cache" / f"{split}-v{CACHE_VERSION}-{size or 'native'}.pt"
    if use_cache and cache.is_file():
        try:
            blob = torch.load(cache, weights_only=False)
            if blob.get("fingerprint") == fp:
                return ImageSet(blob["images"], blob["files"], blob["classes"], blob["folder_label"])
            logger.info("image folder %s/%s changed: rebuilding the decoded cache", root, split)
        except Exception as e:  # unreadable cache: rebuild it
            logger.warning("ignoring unreadable cache %s (%s)", cache, e)
    s = decode_split(root, split, size)
    if use_cache:
        try:
            cache.parent.mkdir(exist_ok=True)
            tmp = cache.with_suffix(f".tmp{os.getpid()}")
            torch.save({"fingerprint": fp, "images": s.images, "files": s.files,
                        "classes": s.classes, "folder_label": s.folder_label}, tmp)
            os.replace(tmp, cache)
        except OSError as e:
            logger.warning("could not write the decoded cache %s (%s)", cache, e)
    return s


def resolve_device(name: str) -> torch.device:
    """auto -> cuda when available else cpu; cuda without a GPU is an error."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise DataError("--device cuda was asked for but no CUDA GPU is available; use --device cpu or auto")
    if name not in ("cpu", "cuda"):
        raise DataError(f"unknown device '{name}'; valid: auto, cpu, cuda")
    return torch.device(name)


@dataclass
class RunData:
    """Everything a method needs to know about the data of one run (tensors on the device)."""

    train: ImageSet
    test: ImageSet
    train_labels: torch.Tensor  # run label per training image (-1: in no task)
    test_labels: torch.Tensor
    mean: tuple[float, ...]
    std: tuple[float, ...]
    n_classes: int
    task_classes: list[list[int]]
