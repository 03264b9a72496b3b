"""Turn split records into device index tensors and run labels; check them against the dataset."""
from __future__ import annotations

import random
from dataclasses import dataclass

import torch

from utils.data.folder import ImageSet
from utils.data.splits import SplitError


@dataclass
class TaskStreams:
    """Per task: training indices and test indices; plus the run label of every image."""

    train: list[torch.Tensor]
    test: list[torch.Tensor]
    train_labels: torch.Tensor
    test_labels: torch.Tensor
    task_classes: list[list[int]]


def _indices(records: list[dict], s: ImageSet, labels: list[int], what: str) -> list[int]:
    """Dataset indices of the records; fills ``labels`` (a list: per-record tensor indexing costs
    about 1 s per 70,000 records)."""
    out = []
    missing = []
    for r in records:
        i = s.index.get(r["file_name"])
        if i is None:
            missing.append(r["file_name"])
            continue
        lab = int(r["label"])
        if labels[i] >= 0 and labels[i] != lab:
            raise SplitError(f"{what}: {r['file_name']} has label {lab} here and {labels[i]} elsewhere")
        labels[i] = lab
        out.append(i)
    if missing:
        raise SplitError(f"{what}: {len(missing)} files of the split files are not in the dataset "
                         f"(first: {missing[:3]}); the split files do not match the dataset")
    return out


def build_streams(train_tasks, test_tasks, train: ImageSet, test: ImageSet, n_classes: int,
                  debug: bool = False) -> TaskStreams:
    """Index tensors (CPU) for every task. In debug mode each task keeps 2560 random samples."""
    tr_lab, te_lab = [-1] * len(train), [-1] * len(test)
    tr, te = [], []
    task_classes: list[list[int]] = []
    for t, (rtr, rte) in enumerate(zip(train_tasks, test_tasks)):
        if debug:
            rtr = random.sample(rtr, min(2560, len(rtr)))
            rte = random.sample(rte, min(2560, len(rte)))
        tr.append(torch.tensor(_indices(rtr, train, tr_lab, f"train task {t}"), dtype=torch.long))
        te.append(torch.tensor(_indices(rte, test, te_lab, f"test task {t}"), dtype=torch.long))
        task_classes.append(sorted({int(r["label"]) for r in rte}))
    bad = max(max(tr_lab, default=-1), max(te_lab, default=-1))
    if bad >= n_classes:
        raise SplitError(f"split files use label {bad} but the dataset has only {n_classes} classes")
    return TaskStreams(tr, te, torch.tensor(tr_lab, dtype=torch.long), torch.tensor(te_lab, dtype=torch.long),
                       task_classes)
