"""A method (and a trainer around it) on random 28x28 grey images (label = index % n_cls), for unit tests."""
from __future__ import annotations

import torch

from configuration.config import base_parser, resolve
from methods import build_method, method_names
from methods.base import Method
from methods.engine.trainer import Settings, Trainer
from utils.data.folder import ImageSet
from utils.data.run_data import RunData


def synthetic_method(argv: list[str], n_cls: int, per_cls: int, task_classes: list | None = None):
    """``main.py`` flags -> the method named by ``--mode``, on n_cls * per_cls random train and test images."""
    cfg = resolve(base_parser(method_names()).parse_args(argv))
    g = torch.Generator().manual_seed(0)
    n = n_cls * per_cls
    labels = torch.arange(n) % n_cls
    classes = [str(c) for c in range(n_cls)]

    def split(name: str) -> ImageSet:
        imgs = torch.randint(0, 256, (n, 1, 28, 28), dtype=torch.uint8, generator=g)
        return ImageSet(imgs, [f"{name}/{i % n_cls}/{i}.png" for i in range(n)], classes, labels.clone())

    data = RunData(split("train"), split("test"), labels, labels.clone(), (0.1307,), (0.3081,), n_cls,
                   task_classes or [])
    return build_method(cfg.mode, cfg, data, torch.device("cpu"))


def trainer_for(method: Method) -> Trainer:
    """A trainer of ``method`` with no task list: tests call ``begin_task`` and ``fit`` themselves."""
    return Trainer(method, method.data, [], Settings.from_config(method.cfg))


class Crash(Exception):
    """Raised in place of a task's start: the run dies there, as a killed process would."""


def crash_then_resume(monkeypatch, argv: list[str], task: int = 2) -> None:
    """Run ``main.py argv`` until task ``task`` starts (Crash), then run it again with --resume to the end."""
    import pytest

    import main as rm_main
    real = Trainer.begin_task

    def crash(self, t, *a):
        if t == task:
            raise Crash()
        return real(self, t, *a)
    monkeypatch.setattr(Trainer, "begin_task", crash)
    with pytest.raises(Crash):
        rm_main.main(argv)
    monkeypatch.setattr(Trainer, "begin_task", real)
    assert rm_main.main(argv + ["--resume"]) == 0
