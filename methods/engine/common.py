"""What the engine's loops share: the run-stopping errors, a training call's result, the trainer's settings."""
from __future__ import annotations

import argparse
from dataclasses import dataclass, field

import torch

from utils.run import dist

Task = tuple[torch.Tensor, torch.Tensor]  # (training indices, test indices) of one task
PHASE_TIMER = {"stream": "stream_pass", "memory": "memory_epochs", "offline": "offline_epochs"}


class StopRun(Exception):
    """A run that cannot go on: the checkpoint of the tasks before ``task_id`` is kept, and the log gives
    the message and ``advice``."""

    advice = ""

    def __init__(self, task_id: int, message: str) -> None:
        super().__init__(message)
        self.task_id = task_id


class DivergedError(StopRun):
    """The training loss became NaN or infinite."""

    advice = "Lower --lr (or check the data) and start the run again."

    def __init__(self, task_id: int, phase: str, epoch: int, loss: float) -> None:
        super().__init__(task_id, f"training diverged: loss {loss} in task {task_id}, {phase} epoch {epoch + 1}")


@dataclass
class FitResult:
    """One training call: best test accuracy over its epochs and the last evaluation."""

    best_acc: float
    last: dict = field(default_factory=dict)
    epochs: list[dict] = field(default_factory=list)


@dataclass(frozen=True)
class Settings:
    """What the trainer needs of the configuration."""

    online: bool
    disjoint: bool  # evaluate on the tasks so far (else on every task's test data)
    lr: float
    topk: int = 1
    eval_epochs: str = "all"  # "all" or "last_task"
    eval_period: int = 0  # anytime evaluation every N stream samples (0: off)
    online_iter: float = 1.0  # i-Blurry protocol: steps per stream sample
    temp_batchsize: int = 0  # stream samples gathered before they train (sample-wise; replaying methods)
    sample_wise: bool = False  # the sample-wise protocol (i-Blurry, Si-Blurry), else task and epochs (blurry, disjoint)
    per_batch_iter: bool = False  # Si-Blurry: each chunk (a stream batch) earns int(online_iter) steps
    eval_after_batch: bool = False  # Si-Blurry: anytime points after the batch that passes a multiple of eval_period

    @classmethod
    def from_config(cls, cfg: argparse.Namespace) -> "Settings":
        """The trainer's settings of a run's configuration (Si-Blurry: the stream in chunks of --batchsize)."""
        siblurry = getattr(cfg, "setting", "") == "siblurry"
        return cls(online=cfg.stream_env == "online", disjoint=cfg.exp_name == "disjoint", lr=cfg.lr, topk=cfg.topk,
                   eval_epochs=cfg.eval_epochs, eval_period=cfg.eval_period or 0,
                   online_iter=getattr(cfg, "online_iter", None) or 1.0,
                   temp_batchsize=getattr(method_config(cfg), "temp_batchsize", None) or 0,  # the methods' chunk
                   sample_wise=getattr(cfg, "protocol", "epochs") == "sample_wise",
                   per_batch_iter=siblurry, eval_after_batch=siblurry)


def method_config(cfg: argparse.Namespace) -> argparse.Namespace:
    """The configuration a method sees; the run's own (logs, results, checkpoints, the trainer's settings) keeps
    the flags as given. Si-Blurry, whose stream comes in batches of --batchsize, each running int(--online_iter)
    updates: the method's temporary batch is the stream batch; its step's batch adds --batchsize -
    --temp_batchsize memory samples (the official code's ER: 64 stream + 32 memory samples); a method that
    counts its own steps per sample (the CLIB code's bic) counts int(--online_iter) / --batchsize per sample;
    and no evaluation falls inside a chunk (eval_period 0 for a method that plans its work up to an evaluated
    sample: bic), since Si-Blurry evaluates after whole batches. Any other setting: ``cfg`` itself."""
    if getattr(cfg, "setting", "") != "siblurry":
        return cfg
    b = cfg.batchsize
    return argparse.Namespace(**{**vars(cfg), "temp_batchsize": b, "batchsize": 2 * b - cfg.temp_batchsize,
                                 "online_iter": int(cfg.online_iter or 1) / b, "eval_period": 0})


def own_rows(sizes: list[int], device: torch.device) -> torch.Tensor:
    """Positions, in a chunk of consecutive batches of ``sizes``, of this rank's share of each batch."""
    starts = [sum(sizes[:n]) for n in range(len(sizes))]
    return torch.cat([dist.shard(torch.arange(o, o + s, device=device)) for o, s in zip(starts, sizes)])
