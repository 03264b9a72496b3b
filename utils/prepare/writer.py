"""Writing images as <split>/<class folder>/<stem>.png, in parallel chunks."""
from __future__ import annotations

import multiprocessing
import os
import sys
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
from PIL import Image

CHUNK = 2000  # images per worker task


def _folder(label: int, folders: Optional[Sequence[str]]) -> str:
    """The class folder of `label`: folders[label], or the label number without folders."""
    return str(int(label)) if folders is None else folders[int(label)]


def _write_chunk(job: tuple[str, np.ndarray, np.ndarray, Sequence[str], Optional[Sequence[str]]]) -> int:
    """Worker: write one chunk of images as `<split_dir>/<class folder>/<stem>.png`."""
    split_dir, images, labels, stems, folders = job
    for img, lbl, stem in zip(images, labels, stems):
        Image.fromarray(img).save(os.path.join(split_dir, _folder(lbl, folders), f"{stem}.png"),
                                  format="PNG")
    return len(stems)


def class_counter_stems(labels: np.ndarray) -> list[str]:
    """cifar2png's file names, which the paper's CIFAR split files use: the sample's 1-based rank
    among the samples of its class, in the standard order, 4 digits (labels [3, 1, 3] -> 0001,
    0001, 0002)."""
    seen: dict[int, int] = {}
    out = []
    for y in labels.tolist():
        seen[y] = seen.get(y, 0) + 1
        out.append(f"{seen[y]:04d}")
    return out


def write_image_folder(images: np.ndarray, labels: np.ndarray, out_dir: Path | str, split: str,
                       indices: Sequence[int] | Sequence[str], workers: int = 2,
                       folders: Optional[Sequence[str]] = None) -> int:
    """Write images[i] to out_dir/split/<folder>/<indices[i]>.png; return the count.

    images: [N,H,W] (grayscale) or [N,H,W,3] (RGB) uint8; <folder>: folders[labels[i]], by default
    the label number; indices: sample numbers, or the file names without ".png".
    """
    from tqdm import tqdm
    split_dir = Path(out_dir) / split
    for label in np.unique(labels):
        (split_dir / _folder(label, folders)).mkdir(parents=True, exist_ok=True)
    stems = [str(int(i)) if isinstance(i, (int, np.integer)) else str(i) for i in indices]
    folders = None if folders is None else tuple(folders)
    jobs = [(str(split_dir), images[s:s + CHUNK], labels[s:s + CHUNK], stems[s:s + CHUNK], folders)
            for s in range(0, len(stems), CHUNK)]
    bar = tqdm(total=len(stems), desc=split, unit="img", disable=not sys.stderr.isatty())
    with bar:
        if workers <= 1:
            for job in jobs:
                bar.update(_write_chunk(job))
        else:
            with multiprocessing.get_context().Pool(workers) as pool:
                for n in pool.imap_unordered(_write_chunk, jobs):
                    bar.update(n)
    return len(stems)


def select_per_class(labels: np.ndarray, per_class: Optional[int]) -> np.ndarray:
    """Indices of the first `per_class` samples of each class (all if None), in standard order."""
    if per_class is None:
        return np.arange(len(labels))
    keep = [np.flatnonzero(labels == c)[:per_class] for c in np.unique(labels)]
    return np.sort(np.concatenate(keep)) if keep else np.arange(0)


def _class_counts(labels: np.ndarray, folders: Optional[Sequence[str]] = None) -> dict[str, int]:
    values, counts = np.unique(labels, return_counts=True)
    return {_folder(v, folders): int(c) for v, c in zip(values, counts)}
