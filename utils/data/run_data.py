"""The data of one run: both splits of a dataset folder on the device, run labels, statistics, task indices."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from utils.data.datasets import facts, preparable
from utils.data.decode import DataError
from utils.data.device_decode import decode_on
from utils.data.folder import ImageSet, fmt_bytes, load_split
from utils.data.tasks import TaskStreams

CPU_BUDGET_GB = 4.0  # default --data_budget_gb without a GPU
GPU_BUDGET_FRACTION = 0.5  # default --data_budget_gb on CUDA: this share of the free GPU memory


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
    info: str = ""  # how the data was loaded (logged once per run)


def resolve_device(name: str) -> torch.device:
    """auto -> cuda when available else cpu; cuda without a GPU is an error."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise DataError("--device cuda was asked for but no CUDA GPU is available; use --device cpu or auto")
    if name not in ("cpu", "cuda"):
        raise DataError(f"unknown device '{name}'; valid: auto, cpu, cuda")
    return torch.device(name)


def default_budget_bytes(device: torch.device, budget_gb: float | None) -> tuple[int, str]:
    """--data_budget_gb in bytes, and where the number came from."""
    if budget_gb is not None:
        return int(budget_gb * 1e9), "--data_budget_gb"
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return int(free * GPU_BUDGET_FRACTION), f"{GPU_BUDGET_FRACTION:.0%} of the free GPU memory"
    return int(CPU_BUDGET_GB * 1e9), "CPU default"


def dataset_missing_message(root: Path, name: str) -> str:
    hint = f" Prepare it with: python -m utils.prepare --dataset {name}" if name in preparable() else ""
    return (f"dataset folder {root} not found (expected {root}/train/<class>/<image> and "
            f"{root}/test/<class>/<image>).{hint}")


def fmt_floats(v: tuple[float, ...]) -> str:
    return "(" + ", ".join(f"{x:.4f}" for x in v) + ")"


def load_splits(root: Path, name: str, device: torch.device, budget_gb: float | None, input_size: int | None,
                use_cache: bool, n_workers: int, decode_device: str = "cpu") -> tuple[ImageSet, ImageSet, str]:
    """The train split and the test (or val) split of ``root``, checked to fit together; and a line
    saying how they were loaded. A dataset the table does not know gets statistics derived from its
    training images. ``decode_device`` (--decode_device), where a streamed split's JPEGs are decoded:
    "cpu" in ``n_workers`` processes, "cuda" on the run's GPU (a DataError when ``device`` is not
    CUDA), "auto" on the GPU when ``device`` is CUDA else as "cpu", "device" on ``device`` whatever it
    is (utils.data.device_decode.decode_on)."""
    decode_device = decode_on(decode_device, device)
    if not (root / "train").is_dir():
        raise DataError(dataset_missing_message(root, name))
    budget, budget_source = default_budget_bytes(device, budget_gb)
    load = dict(size=input_size, use_cache=use_cache, n_workers=n_workers, decode_device=decode_device)
    train = load_split(root, "train", budget=budget, derive_stats=facts(name) is None, **load)
    test_split = "test" if (root / "test").is_dir() else "val"
    # the test split gets what the training split left of the budget
    test = load_split(root, test_split, budget=max(0, budget - (0 if train.streaming else train.nbytes)), **load)
    if train.classes != test.classes:
        raise DataError(f"{root}: train and {test_split} class folders differ")
    if train.images.shape[1:] != test.images.shape[1:]:
        raise DataError(f"{root}: train images are {'x'.join(map(str, train.images.shape[1:]))} (CxHxW) but "
                        f"{test_split} images are {'x'.join(map(str, test.images.shape[1:]))}; give --input_size N "
                        f"to resize both to N x N")
    side = train.images.shape[-1]
    info = (f"{train.info}; {test.info}; budget {fmt_bytes(budget)} ({budget_source}); "
            f"{'resized to' if input_size else 'images'} {side}x{side}")
    return train, test, info


def normalisation(name: str, train: ImageSet, root: Path, input_size: int | None,
                  use_cache: bool) -> tuple[tuple[float, ...], tuple[float, ...], str]:
    """Mean and std of the inputs (the table's, else derived from the training images) and a line on them."""
    d = facts(name)
    side = train.images.shape[-1]
    if d is None:
        cached = f" (cached in {root / '.cache'})" if use_cache else ""
        return train.mean, train.std, (f"derived from the training images{cached}: {train.images.shape[1]} "
                                       f"channel(s), input size {side}, mean {fmt_floats(train.mean)}, "
                                       f"std {fmt_floats(train.std)}")
    text = f"{name}'s table: mean {fmt_floats(d.mean)}, std {fmt_floats(d.std)}; input size {side}"
    if input_size is None and side != d.size:
        text += f" (the table's is {d.size}; --input_size {d.size} resizes to it)"
    return d.mean, d.std, text


def to_device(train: ImageSet, test: ImageSet, streams: TaskStreams, mean: tuple[float, ...], std: tuple[float, ...],
              info: str,
              device: torch.device) -> tuple[RunData, list[tuple[torch.Tensor, torch.Tensor]]]:
    """The run's data and its (train, test) index tensors per task, on ``device``."""
    data = RunData(train.to(device), test.to(device), streams.train_labels.to(device),
                   streams.test_labels.to(device), tuple(mean), tuple(std), len(train.classes), streams.task_classes,
                   info)
    return data, [(a.to(device), b.to(device)) for a, b in zip(streams.train, streams.test)]
