"""The one table of per-dataset facts: statistics, sizes, class names, counts, sources and presets."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Mapping, Optional

# the flags a preset fills when the command line leaves them unset
PRESET_KEYS = ("model_name", "n_epoch", "batchsize", "lr", "opt_name", "sched_name", "memory_size",
               "n_tasks", "n_cls_a_task", "n_init_cls", "topk")


@dataclass(frozen=True)
class Dataset:
    """What the project knows of one named dataset.

    ``preset``: the public scripts' settings (SPEC section 9), with ``n_init_cls`` for blurry
    splits and ``n_init_cls_disjoint`` for disjoint ones. ``source``: how ``utils.prepare`` reads
    the published files ("idx" or "cifar"; None: bring your own image folder). ``classes``: class
    names in label order (None: read from the published files)."""

    name: str
    mean: tuple[float, ...]
    std: tuple[float, ...]
    size: int  # the side of its images
    n_classes: int
    counts: Mapping[str, int]  # samples per split of the published files
    preset: Mapping[str, object]
    source: Optional[str] = None
    torchvision: Optional[str] = None  # torchvision.datasets class that downloads it
    classes: Optional[tuple[str, ...]] = None
    note: str = field(default="")


def _preset(model: str, n_epoch: int, batch: int, lr: float, sched: str, memory: int, n_tasks: int, per_task: int,
            topk: int = 1) -> dict:
    return dict(model_name=model, n_epoch=n_epoch, batchsize=batch, lr=lr, opt_name="sgd", sched_name=sched,
                memory_size=memory, n_tasks=n_tasks, n_cls_a_task=per_task, n_init_cls=n_tasks * per_task,
                n_init_cls_disjoint=per_task, topk=topk)


_MNIST_STATS = ((0.1307,), (0.3081,))
_MNIST_PRESET = _preset("mlp400", 5, 16, 0.05, "cos", 500, 5, 2)
DATASETS: dict[str, Dataset] = {d.name: d for d in (
    Dataset("mnist", *_MNIST_STATS, 28, 10, {"train": 60000, "test": 10000}, _MNIST_PRESET, "idx", "MNIST",
            ("0 - zero", "1 - one", "2 - two", "3 - three", "4 - four", "5 - five", "6 - six", "7 - seven",
             "8 - eight", "9 - nine")),
    # Fashion-MNIST's own statistics: utils.data.stats.mean_std of its 60,000 training images (exact integer
    # sums; tests/test_config.py recomputes them). Both public codes normalise it with MNIST's 0.1307 / 0.3081.
    Dataset("fashion_mnist", (0.2860405969887955,), (0.35302424826730616,), 28, 10, {"train": 60000, "test": 10000},
            _MNIST_PRESET, "idx", "FashionMNIST", ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal",
                                                   "Shirt", "Sneaker", "Bag", "Ankle boot"),
            note="its own statistics; the public codes use MNIST's"),
    Dataset("cifar10", (0.4914, 0.4822, 0.4465), (0.2023, 0.1994, 0.2010), 32, 10, {"train": 50000, "test": 10000},
            _preset("resnet18", 256, 16, 0.05, "cos", 500, 5, 2), "cifar", "CIFAR10"),
    Dataset("cifar100", (0.5071, 0.4867, 0.4408), (0.2675, 0.2565, 0.2761), 32, 100,
            {"train": 50000, "test": 10000}, _preset("resnet32", 256, 16, 0.03, "cos", 2000, 5, 20), "cifar",
            "CIFAR100"),
    Dataset("imagenet", (0.485, 0.456, 0.406), (0.229, 0.224, 0.225), 224, 1000,
            {"train": 1281167, "val": 50000}, _preset("resnet34", 100, 256, 0.05, "multistep", 20000, 10, 100, 5)),
)}
DEFAULT_PRESET = "mnist"  # the preset of a dataset the table does not know (any image folder)


def facts(name: str) -> Optional[Dataset]:
    """The table's entry for ``name``, or None for a folder it does not know."""
    return DATASETS.get(name)


def preset_for(name: str, exp_name: str = "blurry10") -> dict:
    """The flags a run of ``name`` takes when the command line leaves them unset (an unknown
    dataset gets MNIST-sized defaults); ``n_init_cls`` depends on the split."""
    pre = dict((facts(name) or DATASETS[DEFAULT_PRESET]).preset)
    disjoint = pre.pop("n_init_cls_disjoint")
    if exp_name == "disjoint":
        pre["n_init_cls"] = disjoint
    return pre


def preset_text(key: str) -> str:
    """A flag's preset per dataset, for --help: "0.05 (mnist, cifar10, ...), 0.03 (cifar100)"."""
    by_value: dict[object, list[str]] = {}
    for name, d in DATASETS.items():
        by_value.setdefault(d.preset[key], []).append(name)
    return ", ".join(f"{v:g} ({', '.join(n)})" if isinstance(v, float) else f"{v} ({', '.join(n)})"
                     for v, n in by_value.items())


def preparable() -> list[str]:
    """The datasets ``python -m utils.prepare`` can build from their published files."""
    return [n for n, d in DATASETS.items() if d.source is not None]
