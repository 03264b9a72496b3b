"""TensorBoard pictures of a run: the accuracy matrix, the memory's samples and class histogram
after each task, and the run's hyper-parameters with its final metrics (HParams tab)."""
from __future__ import annotations

import numpy as np
import torch

from utils.report.metrics import task_accuracy_matrix

PER_CLASS = 8  # memory samples shown per class


def memory_grid(images: torch.Tensor, labels: torch.Tensor, indices: torch.Tensor, n_classes: int,
                per_class: int = PER_CLASS) -> torch.Tensor:
    """uint8 [3, H', W'] grid: one row per class (up to ``per_class`` of its memory samples, in
    memory order), empty cells black."""
    c, h, w = images.shape[1:]
    cells = torch.zeros(n_classes * per_class, c, h, w, dtype=torch.uint8)
    lab = labels[indices].cpu()
    idx = indices.cpu()
    for k in range(n_classes):
        mine = idx[lab == k][:per_class]
        if len(mine):
            cells[k * per_class:k * per_class + len(mine)] = images[mine.to(images.device)].cpu()
    return image_grid(cells, per_class)


def image_grid(cells: torch.Tensor, per_row: int, pad: int = 1, pad_value: int = 80) -> torch.Tensor:
    """torchvision's make_grid(cells, nrow=per_row, padding=pad, pad_value=pad_value) for uint8
    [N, 1 or 3, H, W] cells (grey turned into 3 channels), without importing torchvision (1.5-3.7 s
    of a short run's start-up)."""
    n, c, h, w = cells.shape
    if c == 1:
        cells = cells.expand(n, 3, h, w)
    per_row = min(per_row, n)
    rows = -(-n // per_row)
    full = torch.full((rows * per_row, 3, h, w), pad_value, dtype=torch.uint8)  # cells past n: padding
    full[:n] = cells
    grid = torch.full((3, rows, h + pad, per_row, w + pad), pad_value, dtype=torch.uint8)
    grid[:, :, pad:, :, pad:] = full.view(rows, per_row, 3, h, w).permute(2, 0, 3, 1, 4)
    grid = grid.reshape(3, rows * (h + pad), per_row * (w + pad))
    out = torch.full((3, grid.shape[1] + pad, grid.shape[2] + pad), pad_value, dtype=torch.uint8)
    out[:, :-pad or None, :-pad or None] = grid
    return out


def accuracy_figure(cls_acc: list, task_classes: list):
    """Heat map of M[i, j] = accuracy on task j's classes after task i (a matplotlib figure)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    m = task_accuracy_matrix(cls_acc, task_classes)
    fig, ax = plt.subplots(figsize=(1.0 + 0.6 * m.shape[1], 0.8 + 0.5 * m.shape[0]))
    ax.imshow(np.ma.masked_invalid(m), cmap="viridis", vmin=0, vmax=100)
    for (i, j), v in np.ndenumerate(m):
        if not np.isnan(v):
            ax.text(j, i, f"{round(v):d}", ha="center", va="center", fontsize=7, color="white" if v < 45 else "black")
    ax.set_xlabel("task j")
    ax.set_ylabel("after task i")
    fig.tight_layout()
    return fig


def log_task(writer, task_id: int, cls_acc: list, task_classes: list, images: torch.Tensor, labels: torch.Tensor,
             memory: torch.Tensor, n_classes: int) -> None:
    """After a task: accuracy matrix so far, a grid of memory samples (training-set indices
    ``memory`` into ``images``), the memory class histogram and per-class counts."""
    if writer is None:
        return
    try:
        writer.add_figure("Accuracy/matrix", accuracy_figure(cls_acc, task_classes), task_id)
    except ImportError:  # matplotlib is optional for the run itself
        pass
    mem_labels = labels[memory]
    if len(memory):
        writer.add_image("Memory/samples", memory_grid(images, labels, memory, n_classes), task_id)
        writer.add_histogram("Memory/class_histogram", mem_labels.cpu().numpy(), task_id,
                             bins=np.arange(n_classes + 1) - 0.5)
    for c, n in enumerate(torch.bincount(mem_labels, minlength=n_classes).tolist()):
        writer.add_scalar(f"MemoryCount/class_{c}", n, task_id)


def hparam_value(v):
    if isinstance(v, (bool, int, float, str)):
        return v
    if v is None:
        return "None"
    return " ".join(map(str, v)) if isinstance(v, (list, tuple)) else str(v)


def log_hparams(writer, config: dict, summary: dict) -> None:
    """The run's settings and final metrics in the HParams tab (same run directory)."""
    if writer is None:
        return
    skip = {"out_dir", "data_dir", "run_name", "joint_acc_source"}
    hp = {k: hparam_value(v) for k, v in config.items() if k not in skip}
    metrics = {f"hparam/{k}": float(v) for k, v in summary.items() if isinstance(v, (int, float))}
    writer.add_hparams(hp, metrics, run_name=".")
