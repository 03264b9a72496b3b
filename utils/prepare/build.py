"""Prepare MNIST-style IDX and CIFAR pickle sets as dataset/<name>/{train,test}/<class>/<file>.png
(MNIST-style: <index>.png; CIFAR: cifar2png's per-class counter, as the paper's split files name them)."""
from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable, Mapping, Optional

import numpy as np

from utils.data.datasets import facts, preparable
from utils.prepare.cifar import SPECS, URL, read_cifar
from utils.prepare.errors import PrepareError
from utils.prepare.idx import IDX_FILES, _idx_path, read_split
from utils.prepare.writer import _class_counts, class_counter_stems, select_per_class, write_image_folder

REPO_ROOT = Path(__file__).resolve().parents[2]
SPLITS = ("train", "test")
OFFICIAL = "official"  # prepare()'s default expected_counts: the table's counts of the dataset
KNOWN_SOURCES = {
    "mnist": [REPO_ROOT.parent / "shared" / "datasets" / "mnist"],
    "fashion_mnist": [Path("/usr/share/datasets/fashion-mnist"),
                      REPO_ROOT.parent / "shared" / "datasets" / "fashion_mnist"],
}


def is_cifar(dataset: str) -> bool:
    return facts(dataset) is not None and facts(dataset).source == "cifar"


def official_counts(dataset: str) -> Mapping[str, int]:
    """Sample counts of the official files. Enforced by default; relax with expected_counts=None
    (or a custom mapping) for hand-made sets."""
    return dict(facts(dataset).counts)


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
        cls = getattr(tv, facts(dataset).torchvision)
        ds = cls(root=str(root), train=True, download=True)  # fetches (and checks) all the files
    except Exception as exc:  # network errors come in many types
        local = find_source(dataset)
        hint = f" (a local copy exists: --source {local})" if local else ""
        what = "the four IDX files by hand and pass --source DIR"
        if is_cifar(dataset):
            what = f"{SPECS[dataset].archive} ({URL}) and pass --source FILE"
        raise PrepareError(f"could not download {dataset} with torchvision ({exc}); get {what}"
                           f"{hint}") from exc
    if is_cifar(dataset):
        return Path(ds.root) / ds.base_folder
    return Path(ds.raw_folder)


def _settings(dataset: str, per_class: Optional[int]) -> dict:
    out: dict = {"dataset": dataset, "per_class": per_class}
    if is_cifar(dataset):
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
    if is_cifar(dataset):
        names, splits = read_cifar(dataset, source, expected_counts)
        return names, names, splits.__getitem__

    def read(split: str) -> tuple[np.ndarray, np.ndarray]:
        expected = None if expected_counts is None else expected_counts.get(split)
        return read_split(source, split, expected)
    return list(facts(dataset).classes), None, read


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
        if is_cifar(dataset):
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
        if not is_cifar(dataset) and not Path(source).is_dir():
            raise PrepareError(f"{source}: source folder not found; pass the folder holding the "
                               "four IDX files")
        return Path(source)  # CIFAR: an archive or a folder, checked by utils.prepare.cifar.locate
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
    if dataset not in preparable():
        raise PrepareError(f"unknown dataset {dataset!r}; choose one of {', '.join(preparable())}")
    if isinstance(expected_counts, str):
        expected_counts = official_counts(dataset)
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
