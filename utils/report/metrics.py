"""Continual-learning metrics as pure functions over per-task accuracy records (percentages)."""
from __future__ import annotations

import math
from typing import Sequence

import numpy as np


def a_last(task_acc: Sequence[float]) -> float:
    """Accuracy after the last task."""
    return float(task_acc[-1])


def a_avg(task_acc: Sequence[float]) -> float:
    """Mean of the accuracies measured after each task."""
    return float(np.mean(task_acc))


def task_accuracy_matrix(cls_acc: Sequence[Sequence[float | None]], task_classes: Sequence[Sequence[int]]) -> np.ndarray:
    """M[i, j] = mean accuracy on task j's classes measured after task i (NaN where unmeasured).

    ``cls_acc[i][c]`` is the accuracy on class label c after task i (None/NaN: class not evaluated).
    """
    acc = np.array([[np.nan if v is None else v for v in row] for row in cls_acc], dtype=float)
    out = np.full((acc.shape[0], len(task_classes)), np.nan)
    for j, cls in enumerate(task_classes):
        sub = acc[:, list(cls)]
        with np.errstate(all="ignore"):
            valid = ~np.isnan(sub)
            cnt = valid.sum(1)
            s = np.where(valid, sub, 0.0).sum(1)
            out[:, j] = np.where(cnt > 0, s / np.maximum(cnt, 1), np.nan)
    return out


def f_last(cls_acc: Sequence[Sequence[float | None]], task_classes: Sequence[Sequence[int]]) -> float:
    """Mean over old tasks j of (best accuracy on j's classes before the last task - final accuracy on them)."""
    m = task_accuracy_matrix(cls_acc, task_classes)
    t = m.shape[0]
    if t < 2:
        return 0.0
    drops = []
    for j in range(min(t - 1, m.shape[1])):
        earlier = m[: t - 1, j]
        if np.all(np.isnan(earlier)) or math.isnan(m[t - 1, j]):
            continue
        drops.append(np.nanmax(earlier) - m[t - 1, j])
    return float(np.mean(drops)) if drops else 0.0


def f_last_per_class(cls_acc: Sequence[Sequence[float | None]]) -> float:
    """i-Blurry's F_last (SPEC section 12): the mean, over classes with a non-zero best accuracy in the
    tasks before the last, of (that best accuracy - the class's accuracy after the last task); a class
    not evaluated (None) in a task does not count there. 0.0 with fewer than two tasks or no such class."""
    if len(cls_acc) < 2:
        return 0.0
    last = cls_acc[-1]
    drops = []
    for c, final in enumerate(last):
        earlier = [row[c] for row in cls_acc[:-1] if c < len(row) and row[c] is not None]
        if final is None or not earlier or max(earlier) <= 0:
            continue
        drops.append(max(earlier) - final)
    return float(np.mean(drops)) if drops else 0.0


def i_last(joint_acc: float | None, last_acc: float) -> float | None:
    """Intransigence: joint (upper-bound) accuracy minus the last accuracy; None without a joint accuracy."""
    return None if joint_acc is None else float(joint_acc - last_acc)


def a_auc(curve_acc: Sequence[float]) -> float:
    """Area under the anytime-accuracy curve (CLIB's A_auc = sum_i acc(i * dn) * dn over evaluation
    points dn samples apart), divided by the span sum_i dn: the mean of the evaluated accuracies."""
    return float(np.mean(curve_acc)) if len(curve_acc) else float("nan")


def summarize(task_acc: Sequence[float], task_acc_final: Sequence[float],
              cls_acc: Sequence[Sequence[float | None]], task_classes: Sequence[Sequence[int]],
              joint_acc: float | None = None) -> dict[str, float | None]:
    """All headline metrics of one run (I_last is None when no joint accuracy is known)."""
    return {
        "A_last": a_last(task_acc),
        "A_avg": a_avg(task_acc),
        "F_last": f_last(cls_acc, task_classes),
        "I_last": i_last(joint_acc, a_last(task_acc)),
        "A_last_final": a_last(task_acc_final),
        "A_avg_final": a_avg(task_acc_final),
    }
