"""i-Blurry-N-M task splits (CLIB, ICLR 2022; SPEC section 12): generated from a seed, and the CLIB
code's split files (``<ds>_split<T>_n<N>_m<M>_rand<seed>_task<t>.json``, test set ``<ds>_val.json``).

N% of the classes are disjoint (equally many per task, all their samples in their own task); the
rest are blurry (a home task each, equally many per task). M% of each blurry class's samples are
pooled, shuffled and cut into T equal chunks; chunk t joins task t; each task is then shuffled.
SPEC leaves open whether the pool is M% of each blurry class or M% of all blurry samples; this is
the first (the one the CIFAR-10 n50_m10 statistics fit)."""
from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from utils.data.splits import Record, SplitError, file_records, folder_of, write_json_atomic


@dataclass(frozen=True)
class IBlurry:
    """i-Blurry-N-M: ``n`` percent of the classes disjoint, ``m`` percent of each blurry class pooled."""

    n: int
    m: int

    @property
    def name(self) -> str:
        return f"iblurry{self.n}_{self.m}"

    def train_name(self, dataset: str, n_tasks: int, seed: int, t: int) -> str:
        """The CLIB code's name of task t's training split."""
        return f"{dataset}_split{n_tasks}_n{self.n}_m{self.m}_rand{seed}_task{t}.json"


def parse_iblurry(exp: str) -> IBlurry | None:
    """IBlurry(N, M) for "iblurryN_M" (0 <= N, M <= 100), None for any other exp name."""
    nm = parse_nm("iblurry", exp)
    return None if nm is None else IBlurry(*nm)


def parse_nm(prefix: str, exp: str) -> tuple[int, int] | None:
    """(N, M) of "<prefix>N_M" (percentages, 0 to 100), None for any other exp name."""
    match = re.fullmatch(prefix + r"(\d{1,3})_(\d{1,3})", exp)
    if match is None:
        return None
    n, m = int(match.group(1)), int(match.group(2))
    if n > 100 or m > 100:
        raise SplitError(f"--exp_name {exp}: N and M of {prefix}N_M are percentages (0-100)")
    return n, m


def clib_train_name(dataset: str, n_tasks: int, spec, seed: int, t: int) -> str:
    """The name of task t's training split file of a sample-wise setting ``spec`` (IBlurry: the CLIB code's)."""
    return spec.train_name(dataset, n_tasks, seed, t)


def clib_test_name(dataset: str) -> str:
    return f"{dataset}_val.json"


def class_roles(classes: list[str], n_tasks: int, spec: IBlurry,
                rng: np.random.RandomState) -> tuple[list[list[str]], list[list[str]]]:
    """Per task, its disjoint classes and its home blurry classes, from a random class order: the first
    N% of the order are disjoint, the rest blurry, each group dealt to the tasks in equal numbers."""
    n_disjoint = round(spec.n * len(classes) / 100)
    order = [classes[i] for i in rng.permutation(len(classes))]
    disjoint, blurry = order[:n_disjoint], order[n_disjoint:]
    for kind, group in (("disjoint", disjoint), ("blurry", blurry)):
        if len(group) % n_tasks:
            raise SplitError(f"i-Blurry-{spec.n}-{spec.m} over {n_tasks} tasks: the {len(group)} {kind} classes of "
                             f"{len(classes)} do not split equally over the tasks; choose N or --n_tasks so they do")
    per_d, per_b = len(disjoint) // n_tasks, len(blurry) // n_tasks
    return ([disjoint[t * per_d:(t + 1) * per_d] for t in range(n_tasks)],
            [blurry[t * per_b:(t + 1) * per_b] for t in range(n_tasks)])


def make_iblurry(class_files: dict[str, list[str]], n_tasks: int, spec: IBlurry,
                 seed: int) -> tuple[list[list[str]], dict[str, str], dict[str, int]]:
    """The training files of each task (shuffled), each class's role ("disjoint"/"blurry") and home task.

    RNG: one numpy RandomState(seed), drawn in this order: the class permutation (of the sorted
    class names); per blurry class in task order, a permutation of its sorted files (the first M%
    go to the pool); the pool's permutation; per task, its stream's permutation."""
    if n_tasks < 1:
        raise SplitError(f"n_tasks must be at least 1, got {n_tasks}")
    classes = sorted(class_files)
    rng = np.random.RandomState(seed)
    disjoint, blurry = class_roles(classes, n_tasks, spec, rng)
    parts: list[list[np.ndarray]] = [[] for _ in range(n_tasks)]
    pool: list[np.ndarray] = []
    role, home = {}, {}
    for t in range(n_tasks):
        for c in disjoint[t]:
            parts[t].append(np.array(sorted(class_files[c]), dtype=object))
            role[c], home[c] = "disjoint", t
        for c in blurry[t]:
            files = np.array(sorted(class_files[c]), dtype=object)
            files = files[rng.permutation(len(files))]
            n_pool = round(spec.m * len(files) / 100)
            pool.append(files[:n_pool])
            parts[t].append(files[n_pool:])
            role[c], home[c] = "blurry", t
    pooled = np.concatenate(pool) if pool else np.array([], dtype=object)
    pooled = pooled[rng.permutation(len(pooled))]
    for t, chunk in enumerate(np.array_split(pooled, n_tasks)):
        parts[t].append(chunk)
    tasks = []
    for t in range(n_tasks):
        stream = np.concatenate(parts[t]) if parts[t] else np.array([], dtype=object)
        tasks.append(list(stream[rng.permutation(len(stream))]))
    return tasks, role, home


def task_summary(tasks: list[list[str]], role: dict[str, str], home: dict[str, int]) -> list[str]:
    """One line per task for the log: its size, its disjoint and home blurry classes, and its pooled share."""
    lines = []
    for t, files in enumerate(tasks):
        counts: dict[str, int] = {}
        for f in files:
            counts[folder_of(f)] = counts.get(folder_of(f), 0) + 1
        mine = sorted((c for c in counts if home.get(c) == t), key=str)
        pooled = sum(n for c, n in counts.items() if home.get(c) != t)
        lines.append(f"task {t}: {len(files)} samples; disjoint {[c for c in mine if role[c] == 'disjoint']}, "
                     f"blurry home {[c for c in mine if role[c] == 'blurry']}; {pooled} pooled from other tasks' "
                     f"blurry classes")
    return lines


def read_clib_collection(folder: Path | str, dataset: str, n_tasks: int, spec,
                         seed: int) -> tuple[list[list[Record]], list[Record]]:
    """The CLIB code's split files of one seed: per task its training records, and the test records.
    Records name their image by ``file_name`` or ``filepath``; ``label`` is never used (SPEC 12)."""
    folder = Path(folder)
    names = [clib_train_name(dataset, n_tasks, spec, seed, t) for t in range(n_tasks)] + [clib_test_name(dataset)]
    missing = [n for n in names if not (folder / n).is_file()]
    if missing:
        raise SplitError(f"--collections_dir {folder}: missing the CLIB split file(s) {missing[:3]}"
                         f"{' ...' if len(missing) > 3 else ''} (expected {names[0]} ... and {names[-1]})")
    loaded = [_clib_records(folder / n) for n in names]
    return loaded[:-1], loaded[-1]


def _clib_records(path: Path) -> list[Record]:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise SplitError(f"{path}: not a readable JSON split file ({e})") from e
    if not isinstance(data, list):
        raise SplitError(f"{path}: expected a JSON list of records, found {type(data).__name__}")
    out = []
    for i, rec in enumerate(data):
        name = rec.get("file_name", rec.get("filepath")) if isinstance(rec, dict) else None
        if not isinstance(name, str) or "klass" not in rec:
            raise SplitError(f"{path}: record {i} needs file_name (or filepath) and klass ({str(rec)[:120]})")
        out.append({"file_name": name, "klass": rec["klass"], "label": rec.get("label", -1)})
    return out


def exposure_labels(train_tasks: list[list[Record]]) -> dict[str, int]:
    """Class folder -> its rank in the order of first appearance over the tasks' streams (SPEC: a
    class's label); the split files' own ``label`` is never used."""
    order: dict[str, int] = {}
    for task in train_tasks:
        for r in task:
            order.setdefault(folder_of(r["file_name"]), len(order))
    return order


def relabel(train_tasks: list[list[Record]], test: list[Record]) -> tuple[list[list[Record]], list[list[Record]]]:
    """Training records labelled by exposure rank, and per task the test records of the classes first
    exposed in it (every test record whose class is ever exposed belongs to exactly one task)."""
    labels = exposure_labels(train_tasks)
    first: dict[str, int] = {}
    for t, task in enumerate(train_tasks):
        for r in task:
            first.setdefault(folder_of(r["file_name"]), t)
    train = [[{**r, "label": labels[folder_of(r["file_name"])]} for r in task] for task in train_tasks]
    tests: list[list[Record]] = [[] for _ in train_tasks]
    for r in test:
        c = folder_of(r["file_name"])
        if c in labels:
            tests[first[c]].append({**r, "label": labels[c]})
    return train, tests


def load_or_make_iblurry(folder: Path | str, dataset: str, spec: IBlurry, seed: int, n_tasks: int,
                         class_files: dict[str, list[str]],
                         test_class_files: dict[str, list[str]]) -> tuple[list[list[Record]], list[list[Record]]]:
    """The CLIB-format split files of this seed from ``folder``, made and written first when missing
    (existing files are never rewritten); relabelled by exposure order (see ``relabel``)."""
    return load_or_make_clib_split(folder, dataset, spec, seed, n_tasks,
                                   lambda: make_iblurry(class_files, n_tasks, spec, seed)[0], test_class_files)


def load_or_make_clib_split(folder: Path | str, dataset: str, spec, seed: int, n_tasks: int,
                            make: Callable[[], list[list[str]]],
                            test_class_files: dict[str, list[str]]) -> tuple[list[list[Record]], list[list[Record]]]:
    """A sample-wise setting's split files of this seed (``spec.train_name``) from ``folder``; when none is there,
    ``make()`` gives each task's training files, written with the classes' order of first appearance as labels
    (existing files are never rewritten; some but not all of them: refused). The test-set file is written when
    missing. Returns the files relabelled by exposure order (see ``relabel``)."""
    folder = Path(folder)
    names = [clib_train_name(dataset, n_tasks, spec, seed, t) for t in range(n_tasks)]
    have = [(folder / n).is_file() for n in names]
    if any(have) and not all(have):
        raise SplitError(f"{folder}: incomplete {spec.name} split files for seed {seed} (missing "
                         f"{[n for n, h in zip(names, have) if not h][:3]}); restore them or delete the others")
    if not all(have):
        tasks = make()
        order: dict[str, int] = {}
        for f in (f for task in tasks for f in task):
            order.setdefault(folder_of(f), len(order))
        folder.mkdir(parents=True, exist_ok=True)
        for name, files in zip(names, tasks):
            write_json_atomic(folder / name, file_records(files, order))
    write_test_file(folder, dataset, test_class_files)
    train, test = read_clib_collection(folder, dataset, n_tasks, spec, seed)
    return relabel(train, test)


def write_test_file(folder: Path, dataset: str, test_class_files: dict[str, list[str]]) -> None:
    """The CLIB code's test-set file (every test image; its labels are never used), unless it is there."""
    if not (folder / clib_test_name(dataset)).is_file():
        test_files = sorted(f for fs in test_class_files.values() for f in fs)
        folder.mkdir(parents=True, exist_ok=True)
        write_json_atomic(folder / clib_test_name(dataset), file_records(test_files, {c: -1 for c in test_class_files}))
