"""Run names: the default name, a unique name claimed for a new run, the lock of a resumed run."""
from __future__ import annotations

import os
from pathlib import Path


def default_run_name(cfg) -> str:
    """The public code's name plus the split, so blurry and disjoint runs do not collide."""
    tr = "".join(f"_{t}" for t in cfg.transforms)
    mode = f"{cfg.mode}-intended" if getattr(cfg, "as_intended", False) else cfg.mode
    return f"{cfg.exp_name}_{mode}_{cfg.mem_manage}_{cfg.stream_env}_msz{cfg.memory_size}_rnd{cfg.rnd_seed}{tr}"


def reserve_run(out_dir: Path, dataset: str, base: str) -> tuple[str, Path]:
    """Claim a run name no other run uses (suffix -2, -3, ... when taken), by creating its
    log file exclusively; nothing of another run is ever overwritten."""
    log_dir = out_dir / "logs" / dataset
    log_dir.mkdir(parents=True, exist_ok=True)
    for n in range(1, 10000):
        name = base if n == 1 else f"{base}-{n}"
        taken = ((out_dir / "results" / dataset / f"{name}.json").exists()
                 or (out_dir / "tensorboard" / dataset / name).exists())
        if taken:
            continue
        try:
            fd = os.open(log_dir / f"{name}.log", os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            continue
        os.close(fd)
        return name, log_dir / f"{name}.log"
    raise RuntimeError(f"no free run name for {base}")


class RunBusyError(Exception):
    """Another live process is running this run."""


def claim_run(out_dir: Path, dataset: str, name: str) -> Path:
    """For --resume: take the run's lock file (its PID inside). A lock whose process is gone is
    stale and taken over; a live one means another process runs it."""
    lock = out_dir / "logs" / dataset / f"{name}.lock"
    lock.parent.mkdir(parents=True, exist_ok=True)
    for _ in range(3):
        try:
            fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            try:
                pid = int(lock.read_text().strip() or 0)
            except (OSError, ValueError):
                pid = 0
            if pid and pid != os.getpid() and _alive(pid):
                raise RunBusyError(f"run {name} is being run by process {pid} ({lock}); wait for it, or remove "
                                   f"the lock if that process is not this run") from None
            lock.unlink(missing_ok=True)
            continue
        with os.fdopen(fd, "w") as f:
            f.write(str(os.getpid()))
        return lock
    raise RunBusyError(f"could not take the lock {lock}")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class RunPaths:
    """Where one run's outputs go under the output root: results, logs, TensorBoard, checkpoint."""

    def __init__(self, out_dir: Path, dataset: str, name: str) -> None:
        self.name = name
        self.results = out_dir / "results" / dataset / f"{name}.json"
        self.npy = self.results.with_suffix(".npy")
        self.log = out_dir / "logs" / dataset / f"{name}.log"
        self.config = out_dir / "logs" / dataset / f"{name}.config.json"
        self.tensorboard = out_dir / "tensorboard" / dataset / name
        self.checkpoint = out_dir / "checkpoints" / dataset / f"{name}.pt"
