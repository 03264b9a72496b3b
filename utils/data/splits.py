"""Task splits (disjoint / blurryM) from a seed, and the paper's JSON split files ("collections")."""
from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

Record = dict  # {"file_name": "train/<class>/<file>", "klass": int | str, "label": int}
Tasks = list[list[Record]]
KEYS = ("file_name", "klass", "label")


class SplitError(Exception):
    """Split files or split settings that cannot be used; the message says why."""


# ---------------------------------------------------------------- names

def train_name(dataset: str, exp: str, seed: int, k: int, t: int) -> str:
    """File name of the training split of task t."""
    return f"{dataset}_train_{exp}_rand{seed}_cls{k}_task{t}.json"


def test_name(dataset: str, seed: int, k: int, t: int) -> str:
    """File name of the test split of task t (shared by all exps of a seed)."""
    return f"{dataset}_test_rand{seed}_cls{k}_task{t}.json"


def parse_exp(exp: str) -> Optional[int]:
    """Return M for "blurryM" (0<M<100), None for "disjoint"; SplitError otherwise."""
    if exp == "disjoint":
        return None
    match = re.fullmatch(r"blurry([1-9]\d?)", exp)
    if match is None:
        raise SplitError(f"unknown exp {exp!r}; valid: disjoint, blurry10, blurry30, or blurryM "
                         "for an integer 0<M<100")
    return int(match.group(1))


def klass_value(name: str) -> int | str:
    """The klass written for a class folder: an int for decimal folder names (like the paper)."""
    if name.isascii() and name.isdigit() and str(int(name)) == name:
        return int(name)
    return name


def folder_of(file_name: str) -> str:
    """The class folder of "split/<class>/<file>"."""
    parts = file_name.split("/")
    return parts[1] if len(parts) == 3 else ""


# ---------------------------------------------------------------- making splits

def _check_shape(classes: Sequence[str], n_tasks: int, k: int) -> None:
    if n_tasks < 1:
        raise SplitError(f"n_tasks must be at least 1, got {n_tasks}")
    if n_tasks * k != len(classes):
        raise SplitError(f"classes not divisible into tasks: {n_tasks} tasks x {k} classes = "
                         f"{n_tasks * k}, but the dataset has {len(classes)} classes")


def _class_order(rng: np.random.RandomState, classes: list[str],
                 class_order: Optional[Sequence[str]]) -> list[str]:
    """Random permutation of the sorted classes (always drawn), or the given order."""
    drawn = [classes[i] for i in rng.permutation(len(classes))]
    if class_order is None:
        return drawn
    if sorted(class_order) != classes:
        raise SplitError(f"class order {list(class_order)} does not match the dataset's classes "
                         f"{classes}")
    return list(class_order)


def file_records(files: Sequence[str], labels: dict[str, int]) -> list[Record]:
    return [{"file_name": f, "klass": klass_value(folder_of(f)), "label": labels[folder_of(f)]}
            for f in files]


def _blurry_parts(rng: np.random.RandomState, own: list[np.ndarray], m: int) -> list[list[np.ndarray]]:
    """Per task, the file arrays it streams: its major part and one chunk from each other task."""
    n_tasks = len(own)
    parts: list[list[np.ndarray]] = [[] for _ in range(n_tasks)]
    for t, files in enumerate(own):
        shuffled = files[rng.permutation(len(files))]
        n_major = len(files) if n_tasks == 1 else round((100 - m) * len(files) / 100)
        parts[t].append(shuffled[:n_major])
        others = [j for j in range(n_tasks) if j != t]
        for j, chunk in zip(others, np.array_split(shuffled[n_major:], max(n_tasks - 1, 1))):
            parts[j].append(chunk)
    return parts


def make_splits(class_files: dict[str, list[str]], test_class_files: dict[str, list[str]],
                exp: str, seed: int, n_tasks: int, n_cls_a_task: int,
                class_order: Optional[Sequence[str]] = None) -> tuple[Tasks, Tasks]:
    """Build (train_tasks, test_tasks) for one seed.

    RNG: one numpy.random.RandomState(seed), drawn in this order: the class permutation (of the
    sorted class names); for blurry, per task 0..T-1 a permutation of its own files (classes in
    task order, each class's files sorted); then per task a permutation of its stream. The class
    order therefore depends only on the seed (test files are shared by all exps of a seed).
    `class_order` overrides the drawn order (the permutation is still drawn, keeping the stream).
    """
    m = parse_exp(exp)
    classes = sorted(class_files)
    _check_shape(classes, n_tasks, n_cls_a_task)
    unknown = sorted(set(test_class_files) - set(classes))
    if unknown:
        raise SplitError(f"test classes {unknown} have no training files")
    rng = np.random.RandomState(seed)
    order = _class_order(rng, classes, class_order)
    labels = {c: i for i, c in enumerate(order)}
    owned = [order[t * n_cls_a_task:(t + 1) * n_cls_a_task] for t in range(n_tasks)]
    own = [np.array([f for c in cs for f in sorted(class_files[c])], dtype=object) for cs in owned]
    parts = [[files] for files in own] if m is None else _blurry_parts(rng, own, m)
    streams = [np.concatenate(p) for p in parts]
    train = [file_records(list(s[rng.permutation(len(s))]), labels) for s in streams]
    test = [file_records(sorted(f for c in cs for f in test_class_files.get(c, [])), labels)
            for cs in owned]
    return train, test


# ---------------------------------------------------------------- files

def write_json_atomic(path: Path, records: list[Record]) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        tmp.write_text(json.dumps(records, separators=(",", ":")))
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def write_collection(out_dir: Path | str, dataset: str, exp: str, seed: int, k: int,
                     train_tasks: Tasks, test_tasks: Tasks, skip_existing: bool = False) -> list[Path]:
    """Write the train and test files (each atomically); return the paths written."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    jobs = [(out_dir / train_name(dataset, exp, seed, k, t), r) for t, r in enumerate(train_tasks)]
    jobs += [(out_dir / test_name(dataset, seed, k, t), r) for t, r in enumerate(test_tasks)]
    written = []
    for path, records in jobs:
        if skip_existing and path.exists():
            continue
        write_json_atomic(path, records)
        written.append(path)
    return written


def _check_records(path: Path, data: object) -> list[Record]:
    if not isinstance(data, list):
        raise SplitError(f"{path}: expected a JSON list of records, found {type(data).__name__}")
    for i, rec in enumerate(data):
        ok = (isinstance(rec, dict) and all(key in rec for key in KEYS)
              and isinstance(rec["file_name"], str) and isinstance(rec["klass"], (int, str))
              and isinstance(rec["label"], int) and not isinstance(rec["label"], bool))
        if not ok:
            raise SplitError(f"{path}: record {i} is malformed ({str(rec)[:120]}); each record "
                             f"needs file_name (str), klass and label (int)")
    return data


def read_records(path: Path | str) -> list[Record]:
    """Read and check one split file."""
    path = Path(path)
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise
    except (OSError, ValueError) as exc:
        raise SplitError(f"{path}: not a readable JSON split file ({exc})") from exc
    return _check_records(path, data)


def _names(dataset: str, exp: str, seed: int, k: int, n_tasks: int) -> tuple[list[str], list[str]]:
    return ([train_name(dataset, exp, seed, k, t) for t in range(n_tasks)],
            [test_name(dataset, seed, k, t) for t in range(n_tasks)])


def _missing_error(folder: Path, name: str, expected: list[str], dataset: str) -> SplitError:
    found = sorted(p.name for p in folder.glob(f"{dataset}_*.json")) if folder.is_dir() else []
    shown = ", ".join(found[:6]) + (" ..." if len(found) > 6 else "") if found else "none"
    return SplitError(f"{folder / name}: split file not found; expected {expected[0]} .. "
                      f"{expected[-1]} in {folder} (found there: {shown})")


def read_collection(folder: Path | str, dataset: str, exp: str, seed: int, k: int,
                    n_tasks: int) -> tuple[Tasks, Tasks]:
    """Read the n_tasks train and n_tasks test files of one (dataset, exp, seed, k)."""
    folder = Path(folder)
    parse_exp(exp)
    tasks: list[Tasks] = []
    for names in _names(dataset, exp, seed, k, n_tasks):
        try:
            tasks.append([read_records(folder / n) for n in names])
        except FileNotFoundError as exc:
            raise _missing_error(folder, Path(exc.filename).name, names, dataset) from None
    return tasks[0], tasks[1]


# ---------------------------------------------------------------- validation

def _examples(items: list, n: int = 5) -> str:
    return ", ".join(map(str, items[:n])) + (" ..." if len(items) > n else "")


def validate_against(train_tasks: Tasks, test_tasks: Tasks, known_files: set[str]) -> dict[str, int]:
    """Check split records against the dataset's files; return the klass -> label mapping."""
    records = [r for tasks in (train_tasks, test_tasks) for task in tasks for r in task]
    missing = [r["file_name"] for r in records if r["file_name"] not in known_files]
    if missing:
        raise SplitError(f"split files do not match the dataset: {len(missing)} of {len(records)} "
                         f"file names are not in it (e.g. {_examples(missing)})")
    wrong = [r["file_name"] + f" (klass {r['klass']!r})" for r in records
             if str(r["klass"]) != folder_of(r["file_name"])]
    if wrong:
        raise SplitError(f"split files do not match the dataset: {len(wrong)} records have a klass "
                         f"other than their class folder (e.g. {_examples(wrong)})")
    return _label_map(records)


def _label_map(records: list[Record]) -> dict[str, int]:
    """klass -> label, required one-to-one and consistent."""
    to_label: dict[str, set[int]] = {}
    to_klass: dict[int, set[str]] = {}
    for r in records:
        to_label.setdefault(str(r["klass"]), set()).add(r["label"])
        to_klass.setdefault(r["label"], set()).add(str(r["klass"]))
    bad = [f"klass {c} -> labels {sorted(v)}" for c, v in to_label.items() if len(v) > 1]
    bad += [f"label {lab} <- klasses {sorted(v)}" for lab, v in to_klass.items() if len(v) > 1]
    if bad:
        raise SplitError(f"split files do not match the dataset: the klass -> label mapping is not "
                         f"one-to-one ({_examples(sorted(bad))})")
    return {c: next(iter(v)) for c, v in sorted(to_label.items())}


# ---------------------------------------------------------------- cache

def list_class_files(root: Path | str, split: str) -> dict[str, list[str]]:
    """Map class folder -> sorted "split/<class>/<file>" names of an image-folder dataset."""
    split_dir = Path(root) / split
    if not split_dir.is_dir():
        raise SplitError(f"{split_dir}: dataset split folder not found")
    return {c.name: sorted(f"{split}/{c.name}/{f.name}" for f in c.iterdir() if f.is_file())
            for c in sorted(split_dir.iterdir()) if c.is_dir()}


def _order_from(tasks: Tasks, n_classes: int) -> Optional[list[str]]:
    """The class order (klass folder by label) that existing records imply, if complete."""
    mapping = _label_map([r for task in tasks for r in task])
    by_label = {lab: c for c, lab in mapping.items()}
    if sorted(by_label) != list(range(n_classes)):
        return None
    return [by_label[i] for i in range(n_classes)]


def load_or_make(collections_dir: Path | str, dataset: str, exp: str, seed: int, k: int,
                 n_tasks: int, class_files: dict[str, list[str]],
                 test_class_files: dict[str, list[str]]) -> tuple[Tasks, Tasks]:
    """Read the split files from the cache folder, or make and write the missing ones.

    Train files are all-or-nothing. When some files exist (e.g. the paper's test files), the
    class order is taken from them so that new files agree with the existing ones; existing
    files are never rewritten. The result is validated against the dataset's files.
    """
    folder = Path(collections_dir)
    train_names, test_names = _names(dataset, exp, seed, k, n_tasks)
    have_train = [(folder / n).exists() for n in train_names]
    have_test = [(folder / n).exists() for n in test_names]
    if any(have_train) and not all(have_train):
        raise SplitError(f"{folder}: incomplete training split files for {exp} seed {seed} "
                         f"(missing {_examples([n for n, h in zip(train_names, have_train) if not h])});"
                         " restore them or delete the others to regenerate")
    if not (all(have_train) and all(have_test)):
        existing = [read_records(folder / n) for n, h in
                    zip(train_names + test_names, have_train + have_test) if h]
        order = _order_from(existing, len(class_files)) if existing else None
        if existing and order is None:
            raise SplitError(f"{folder}: existing split files for seed {seed} do not define the "
                             "full class order; restore the missing files or delete them")
        train, test = make_splits(class_files, test_class_files, exp, seed, n_tasks, k, order)
        write_collection(folder, dataset, exp, seed, k, train, test, skip_existing=True)
    train, test = read_collection(folder, dataset, exp, seed, k, n_tasks)
    known = {f for files in (class_files, test_class_files) for fs in files.values() for f in fs}
    validate_against(train, test, known)
    return train, test
