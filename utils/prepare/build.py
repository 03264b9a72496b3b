"""Prepare MNIST-style IDX and CIFAR pickle sets as dataset/<name>/{train,test}/<class>/<file>.png
(MNIST-style: <index>.png; CIFAR: cifar2png's per-class counter, as the paper's split files name them)."""
from __future__ import annotations

import argparse
import gzip
import json
import multiprocessing
import os
import shutil
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path
from types import ModuleType
from typing import Callable, Mapping, Optional, Sequence

import numpy as np
from PIL import Image

REPO_ROOT = Path(__file__).resolve().parents[1]
DATASETS = ("mnist", "fashion_mnist", "cifar10", "cifar100")
CIFAR_DATASETS = ("cifar10", "cifar100")  # read by utils.cifar
SPLITS = ("train", "test")
IDX_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
# Sample counts of the official files. Enforced by default; relax with expected_counts=None
# (or a custom mapping) for hand-made IDX sets.
FULL_COUNTS: Mapping[str, int] = {"train": 60000, "test": 10000}
OFFICIAL_COUNTS: Mapping[str, Mapping[str, int]] = {
    "mnist": FULL_COUNTS, "fashion_mnist": FULL_COUNTS,
    "cifar10": {"train": 50000, "test": 10000}, "cifar100": {"train": 50000, "test": 10000},
}
OFFICIAL = "official"  # prepare()'s default expected_counts: OFFICIAL_COUNTS[dataset]
MAGIC_IMAGES = 0x00000803
MAGIC_LABELS = 0x00000801
IMAGE_SHAPE = (28, 28)
N_CLASSES = 10
CLASS_NAMES = {
    "mnist": ["0 - zero", "1 - one", "2 - two", "3 - three", "4 - four",
              "5 - five", "6 - six", "7 - seven", "8 - eight", "9 - nine"],
    "fashion_mnist": ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
                      "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"],
}
KNOWN_SOURCES = {
    "mnist": [REPO_ROOT.parent / "shared" / "datasets" / "mnist"],
    "fashion_mnist": [Path("/usr/share/datasets/fashion-mnist"),
                      REPO_ROOT.parent / "shared" / "datasets" / "fashion_mnist"],
}
TORCHVISION_CLASS = {"mnist": "MNIST", "fashion_mnist": "FashionMNIST", "cifar10": "CIFAR10",
                     "cifar100": "CIFAR100"}
CHUNK = 2000  # images per worker task


class PrepareError(Exception):
    """A preparation problem; the message names the file and says what to do."""


# ---------------------------------------------------------------- reading IDX

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


# ---------------------------------------------------------------- sources

def find_source(dataset: str) -> Optional[Path]:
    """Return the first known local folder holding the four IDX files of `dataset`, or None."""
    for folder in KNOWN_SOURCES.get(dataset, []):
        try:
            if all(_idx_path(folder, b) for pair in IDX_FILES.values() for b in pair):
                return folder
        except PrepareError:
            continue
    return None


def download(dataset: str, root: Path | str) -> Path:
    """Download `dataset` with torchvision into `root`; return the folder with its raw files.

    MNIST-style: the four IDX files; CIFAR: the extracted python-pickle folder (cifar-10-batches-py/).
    """
    try:
        from torchvision import datasets as tv
        cls = getattr(tv, TORCHVISION_CLASS[dataset])
        ds = cls(root=str(root), train=True, download=True)  # fetches (and checks) all the files
    except Exception as exc:  # network errors come in many types
        local = find_source(dataset)
        hint = f" (a local copy exists: --source {local})" if local else ""
        what = "the four IDX files by hand and pass --source DIR"
        if dataset in CIFAR_DATASETS:
            what = f"{_cifar().SPECS[dataset].archive} ({_cifar().URL}) and pass --source FILE"
        raise PrepareError(f"could not download {dataset} with torchvision ({exc}); get {what}"
                           f"{hint}") from exc
    if dataset in CIFAR_DATASETS:
        return Path(ds.root) / ds.base_folder
    return Path(ds.raw_folder)


def _cifar() -> ModuleType:
    """utils.cifar, imported on use (it imports this module for PrepareError)."""
    from utils import cifar
    return cifar


# ---------------------------------------------------------------- writing PNGs

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


# ---------------------------------------------------------------- preparing

def select_per_class(labels: np.ndarray, per_class: Optional[int]) -> np.ndarray:
    """Indices of the first `per_class` samples of each class (all if None), in standard order."""
    if per_class is None:
        return np.arange(len(labels))
    keep = [np.flatnonzero(labels == c)[:per_class] for c in np.unique(labels)]
    return np.sort(np.concatenate(keep)) if keep else np.arange(0)


def _class_counts(labels: np.ndarray, folders: Optional[Sequence[str]] = None) -> dict[str, int]:
    values, counts = np.unique(labels, return_counts=True)
    return {_folder(v, folders): int(c) for v, c in zip(values, counts)}


def _settings(dataset: str, per_class: Optional[int]) -> dict:
    out: dict = {"dataset": dataset, "per_class": per_class}
    if dataset in CIFAR_DATASETS:
        out["file_names"] = "class_counter"  # folders written before had <index>.png
    return out


def _existing_state(target: Path, settings: dict) -> str:
    """'absent', 'same' (complete, same settings) or 'other' for the target folder."""
    if not target.exists():
        return "absent"
    try:
        meta = json.loads((target / "prepared.json").read_text())
    except (OSError, ValueError):
        return "other"
    same = all(meta.get(k) == v for k, v in settings.items())
    return "same" if same else "other"


SplitReader = Callable[[str], tuple[np.ndarray, np.ndarray]]


def _open_source(dataset: str, source: Path, expected_counts: Optional[Mapping[str, int]]
                 ) -> tuple[list[str], Optional[list[str]], SplitReader]:
    """Class names, class folder names (None: the label number) and a reader of each split."""
    if dataset in CIFAR_DATASETS:
        names, splits = _cifar().read_cifar(dataset, source, expected_counts)
        return names, names, splits.__getitem__

    def read(split: str) -> tuple[np.ndarray, np.ndarray]:
        expected = None if expected_counts is None else expected_counts.get(split)
        return read_split(source, split, expected)
    return CLASS_NAMES[dataset], None, read


def _build(tmp: Path, dataset: str, source: Path, per_class: Optional[int],
           expected_counts: Optional[Mapping[str, int]], workers: int) -> dict:
    """Write the image folder, classes.json and prepared.json (last) into `tmp`."""
    class_names, folders, read = _open_source(dataset, source, expected_counts)
    counts = {}
    for split in SPLITS:
        images, labels = read(split)
        keep = select_per_class(labels, per_class)
        named = {} if folders is None else {"folders": folders}
        # names from the full split, so a --per_class subset keeps the full set's file names
        if dataset in CIFAR_DATASETS:
            counter = class_counter_stems(labels)
            stems = [counter[i] for i in keep]
        else:
            stems = keep
        write_image_folder(images[keep], labels[keep], tmp, split, stems, workers=workers, **named)
        counts[split] = _class_counts(labels[keep], folders)
    names = {str(i): n for i, n in enumerate(class_names)}
    (tmp / "classes.json").write_text(json.dumps(names, indent=1) + "\n")
    meta = {**_settings(dataset, per_class), "source": str(source), "counts": counts,
            "created": datetime.now(timezone.utc).isoformat(timespec="seconds")}
    (tmp / "prepared.json").write_text(json.dumps(meta, indent=1) + "\n")
    return counts


def _swap_in(tmp: Path, target: Path) -> None:
    """Rename tmp to target; an existing target is renamed away first and deleted after."""
    old = target.with_name(f".{target.name}.old-{os.getpid()}")
    if target.exists():
        shutil.rmtree(old, ignore_errors=True)
        target.rename(old)
    tmp.rename(target)
    shutil.rmtree(old, ignore_errors=True)


def _resolve_source(dataset: str, source: Optional[Path | str], download_root: Path) -> Path:
    if source is not None:
        if dataset not in CIFAR_DATASETS and not Path(source).is_dir():
            raise PrepareError(f"{source}: source folder not found; pass the folder holding the "
                               "four IDX files")
        return Path(source)  # CIFAR: an archive or a folder, checked by utils.cifar.locate
    return download(dataset, download_root)


def prepare(dataset: str, source: Optional[Path | str] = None, data_dir: Path | str = "dataset",
            per_class: Optional[int] = None, force: bool = False,
            expected_counts: Optional[Mapping[str, int] | str] = OFFICIAL,
            workers: int = 2) -> Path:
    """Prepare `dataset` into data_dir/<dataset>; return that folder.

    source: MNIST-style, the folder with the four IDX files; CIFAR, the python archive
    (cifar-10-python.tar.gz), its extracted folder (cifar-10-batches-py/) or a folder holding either.
    None downloads with torchvision.
    expected_counts: sample counts per split the source files must hold (default OFFICIAL: 60000/10000
    for MNIST, 50000/10000 for CIFAR, checked on the full files before any --per_class selection);
    None skips it.
    """
    if dataset not in DATASETS:
        raise PrepareError(f"unknown dataset {dataset!r}; choose one of {', '.join(DATASETS)}")
    if isinstance(expected_counts, str):
        expected_counts = OFFICIAL_COUNTS[dataset]
    if per_class is not None and per_class < 1:
        raise PrepareError(f"--per_class must be at least 1, got {per_class}")
    data_dir = Path(data_dir)
    target = data_dir / dataset
    state = _existing_state(target, _settings(dataset, per_class))
    if state == "same" and not force:
        print(f"{target}: already prepared")
        return target
    if state == "other" and not force:
        raise PrepareError(f"{target}: exists but was not prepared with these settings (partial, "
                           f"another --per_class, or older file names); pass --force to replace it or delete it")
    data_dir.mkdir(parents=True, exist_ok=True)
    tmp = data_dir / f".{dataset}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        with tempfile.TemporaryDirectory(prefix="prepare-dl-") as dl_root:
            src = _resolve_source(dataset, source, Path(dl_root))
            start = time.perf_counter()
            counts = _build(tmp, dataset, src, per_class, expected_counts, workers)
            _swap_in(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    n = sum(sum(c.values()) for c in counts.values())
    print(f"{target}: wrote {n} PNGs in {time.perf_counter() - start:.1f} s "
          f"(train {sum(counts['train'].values())}, test {sum(counts['test'].values())})")
    return target


# ---------------------------------------------------------------- CLI

def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    """Parse the command line of `python -m utils.prepare`."""
    p = argparse.ArgumentParser(prog="python -m utils.prepare", description=__doc__)
    p.add_argument("--dataset", required=True, choices=DATASETS)
    p.add_argument("--source", default=None,
                   help="MNIST-style: folder with the four IDX files (plain or .gz); CIFAR: "
                        "cifar-10(0)-python.tar.gz, its extracted folder, or a folder holding "
                        "either; default: download")
    p.add_argument("--data_dir", default="dataset")
    p.add_argument("--per_class", type=int, default=None,
                   help="keep only the first N samples of each class (quick trials)")
    p.add_argument("--force", action="store_true", help="replace an existing, different folder")
    p.add_argument("--no_count_check", action="store_true",
                   help="do not require the official 60000/10000 (CIFAR: 50000/10000) samples "
                        "(custom sets)")
    p.add_argument("--workers", type=int, default=2)
    return p.parse_args(argv)


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Run the CLI; return the exit code (2 on a PrepareError)."""
    args = parse_args(argv)
    try:
        prepare(args.dataset, args.source, args.data_dir, args.per_class, args.force,
                expected_counts=None if args.no_count_check else OFFICIAL,
                workers=args.workers)
    except PrepareError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    # Run the importable utils.prepare, not this __main__ copy: utils.cifar raises *its* PrepareError.
    from utils.prepare import main as _main
    sys.exit(_main())
