"""PNG figures of summarised runs: accuracy after each task and anytime accuracy (mean and band over seeds),
the per-task accuracy and forgetting matrices, and the class histogram of the final memory."""
from __future__ import annotations

import re
from pathlib import Path

import numpy as np

from utils.report.metrics import task_accuracy_matrix


def _plt():
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9]+", "_", text).strip("_")[:120]


def _save_with_legend(plt, fig, ax, path: Path) -> Path:
    """Grid, the legend outside the axes on the right, and the PNG written."""
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def curve_stats(curves: list[list[float]]) -> tuple[np.ndarray, np.ndarray]:
    """Mean and sample std over seeds of per-task accuracies (runs of unequal length are cut to
    the shortest)."""
    n = min(len(c) for c in curves)
    a = np.array([c[:n] for c in curves], dtype=float)
    return a.mean(0), (a.std(0, ddof=1) if len(a) > 1 else np.zeros(n))


def forgetting_matrix(acc: np.ndarray) -> np.ndarray:
    """F[i, j] = best accuracy on task j's classes before task i minus that after task i (i > j);
    NaN on and above the diagonal."""
    t, k = acc.shape
    out = np.full((t, k), np.nan)
    for i in range(1, t):
        for j in range(min(i, k)):
            best = np.nanmax(acc[:i, j]) if not np.all(np.isnan(acc[:i, j])) else np.nan
            out[i, j] = best - acc[i, j]
    return out


def mean_matrix(results: list[dict]) -> np.ndarray:
    mats = [task_accuracy_matrix(r["cls_acc"], r["task_classes"]) for r in results]
    n = min(m.shape[0] for m in mats)
    import warnings
    with warnings.catch_warnings():  # cells never measured stay NaN
        warnings.simplefilter("ignore", RuntimeWarning)
        return np.nanmean(np.stack([m[:n] for m in mats]), axis=0)


def plot_accuracy(groups: dict[str, list[dict]], title: str, path: Path) -> Path:
    """One line per group: task_acc after each task, mean over seeds, +- 1 std band."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(12, 4.5 + 0.12 * len(groups)))
    colors = plt.get_cmap("tab20").colors
    for k, (label, results) in enumerate(groups.items()):
        m, s = curve_stats([r["task_acc"] for r in results])
        x = np.arange(1, len(m) + 1)
        color = colors[k % len(colors)]
        ax.plot(x, m, marker="os^vD"[k // len(colors) % 5], color=color, linestyle=["-", "--", ":"][k // 20 % 3],
                label=f"{label} (n={len(results)})")
        ax.fill_between(x, m - s, m + s, color=color, alpha=0.15)
    ax.set_xlabel("task")
    ax.set_ylabel("accuracy after the task (%)")
    ax.set_title(title)
    ax.set_xticks(range(1, max(len(r["task_acc"]) for g in groups.values() for r in g) + 1))
    return _save_with_legend(plt, fig, ax, path)


def anytime_stats(results: list[dict]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Samples seen, mean and sample std over seeds of the anytime accuracy (cut to the shortest curve)."""
    curves = [r["anytime"] for r in results]
    n = min(len(c) for c in curves)
    x = np.array([p["samples"] for p in curves[0][:n]], dtype=float)
    a = np.array([[p["acc"] for p in c[:n]] for c in curves], dtype=float)
    return x, a.mean(0), (a.std(0, ddof=1) if len(a) > 1 else np.zeros(n))


def plot_anytime(groups: dict[str, list[dict]], title: str, path: Path) -> Path:
    """One line per group: the anytime accuracy against the stream samples seen, mean over seeds, +- 1 std
    band, with the group's A_auc in its label."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(12, 4.5 + 0.12 * len(groups)))
    colors = plt.get_cmap("tab20").colors
    for k, (label, results) in enumerate(groups.items()):
        x, m, s = anytime_stats(results)
        color = colors[k % len(colors)]
        auc = np.mean([r.get("A_auc", np.nan) for r in results])
        ax.plot(x, m, color=color, linestyle=["-", "--", ":"][k // len(colors) % 3], linewidth=1.2,
                label=f"{label} (A_auc {auc:.2f}, n={len(results)})")
        ax.fill_between(x, m - s, m + s, color=color, alpha=0.15)
    ax.set_xlabel("stream samples seen")
    ax.set_ylabel("accuracy on the exposed classes (%)")
    ax.set_title(f"anytime accuracy: {title}")
    return _save_with_legend(plt, fig, ax, path)


def _heat(ax, m: np.ndarray, title: str, cmap: str, vmin: float, vmax: float) -> None:
    im = ax.imshow(np.ma.masked_invalid(m), cmap=cmap, vmin=vmin, vmax=vmax)
    dark_low = cmap == "viridis"  # viridis is dark at low values, magma_r at high ones
    for (i, j), v in np.ndenumerate(m):
        if not np.isnan(v):
            f = (v - vmin) / max(vmax - vmin, 1e-9)
            ax.text(j, i, f"{round(v):d}", ha="center", va="center", fontsize=7,
                    color="white" if (f < 0.45 if dark_low else f > 0.55) else "black")
    ax.set_xlabel("task j (its classes)")
    ax.set_ylabel("after task i")
    ax.set_xticks(range(m.shape[1]))
    ax.set_yticks(range(m.shape[0]))
    ax.set_title(title, fontsize=9)
    ax.figure.colorbar(im, ax=ax, fraction=0.046)


def plot_group(label: str, results: list[dict], path: Path) -> Path:
    """Accuracy matrix, forgetting matrix (means over seeds) and the final memory's class histogram."""
    plt = _plt()
    acc = mean_matrix(results)
    fig, axes = plt.subplots(1, 3, figsize=(14, 4.2))
    _heat(axes[0], acc, "accuracy on task j's classes (%)", "viridis", 0, 100)
    forg = forgetting_matrix(acc)
    _heat(axes[1], forg, "forgetting: best before - now", "magma_r", 0, max(1.0, float(np.nanmax(forg, initial=0))))
    counts = [r["memory_class_counts"][-1] for r in results if r.get("memory_class_counts")]
    if counts:
        n = min(len(c) for c in counts)
        c = np.array([x[:n] for x in counts], dtype=float)
        axes[2].bar(range(n), c.mean(0), yerr=c.std(0, ddof=1) if len(c) > 1 else None, capsize=2)
        axes[2].set_xlabel("class")
        axes[2].set_ylabel("samples in the final memory")
        axes[2].set_xticks(range(n))
    axes[2].set_title("final memory per class", fontsize=9)
    fig.suptitle(f"{label} (n={len(results)})", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def write_plots(cells: dict[tuple[str, str], list], cols: list[str], out_dir: Path) -> list[Path]:
    """Per column an accuracy-per-task figure; per group a matrices + memory figure."""
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    for col in cols:
        groups = {row: [r.result for r in runs] for (row, c), runs in sorted(cells.items()) if c == col and runs}
        if groups:
            paths.append(plot_accuracy(groups, col, out_dir / f"accuracy_{slug(col)}.png"))
        anytime = {row: res for row, res in groups.items() if all(r.get("anytime") for r in res)}
        if anytime:
            paths.append(plot_anytime(anytime, col, out_dir / f"anytime_{slug(col)}.png"))
    for (row, col), runs in sorted(cells.items()):
        res = [r.result for r in runs if r.result.get("cls_acc") and r.result.get("task_classes")]
        if res:
            paths.append(plot_group(f"{row} | {col}", res, out_dir / f"group_{slug(col)}__{slug(row)}.png"))
    return paths
