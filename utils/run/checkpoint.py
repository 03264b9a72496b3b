"""Per-task checkpoints for --resume: the method's whole state (model, optimizer, memory, method
extras), the driver's records and every RNG state, written atomically (temporary file + rename)."""
from __future__ import annotations

import os
import random
from pathlib import Path

import numpy as np
import torch

# Method attributes rebuilt from the command line instead of saved
NOT_SAVED = ("cfg", "data", "device", "writer")
# settings that may differ between the interrupted run and its resumption
FREE_KEYS = {"resume", "run_name", "device", "device_resolved", "out_dir", "data_dir", "joint_acc_source",
             "mem_manage_resolved", "no_cache", "n_worker", "data_budget_gb"}


class CheckpointError(Exception):
    """A checkpoint that cannot be used for this command."""


def checkpoint_path(out_dir: Path, dataset: str, run: str) -> Path:
    return out_dir / "checkpoints" / dataset / f"{run}.pt"


def rng_state() -> dict:
    """Python, NumPy, torch (and CUDA) generator states; torch's as bytes, so that loading the
    checkpoint onto a device does not move them."""
    state = {"python": random.getstate(), "numpy": np.random.get_state(),
             "torch": torch.get_rng_state().numpy().tobytes()}
    if torch.cuda.is_available():
        state["cuda"] = [s.numpy().tobytes() for s in torch.cuda.get_rng_state_all()]
    return state


def _bytes_tensor(b: bytes) -> torch.Tensor:
    return torch.frombuffer(bytearray(b), dtype=torch.uint8)


def set_rng_state(state: dict) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(_bytes_tensor(state["torch"]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([_bytes_tensor(b) for b in state["cuda"]])


def save(path: Path, task: int, method, rec: dict, timers: dict, config: dict, wall_s: float) -> None:
    """Everything needed to continue after ``task``; the previous checkpoint stays intact until
    the new one is complete on disk."""
    # bound methods of the method itself (e.g. BiC's augmentation switch) are set again by the
    # next task's before_task; the fresh method has them
    kept = {k: v for k, v in vars(method).items() if k not in NOT_SAVED and getattr(v, "__self__", None) is not method}
    state = {"task": task, "method": kept,
             "rec": {k: v for k, v in rec.items()}, "timers": dict(timers), "rng": rng_state(),
             "config": {k: v for k, v in config.items() if k not in FREE_KEYS}, "wall_s": wall_s}
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    with open(tmp, "wb") as f:
        torch.save(state, f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def load(path: Path, config: dict, device: torch.device) -> dict:
    """The checkpoint's state, after checking it belongs to the same settings."""
    try:
        state = torch.load(path, map_location=device, weights_only=False)
    except Exception as e:  # noqa: BLE001 - any unreadable file gets the same advice
        raise CheckpointError(f"checkpoint {path} cannot be read ({type(e).__name__}: {e}); delete it to start "
                              f"the run again from the beginning") from None
    want = {k: v for k, v in config.items() if k not in FREE_KEYS}
    diff = sorted(k for k in set(want) | set(state["config"]) if want.get(k) != state["config"].get(k))
    if diff:
        shown = ", ".join(f"{k}: {state['config'].get(k)!r} -> {want.get(k)!r}" for k in diff[:5])
        raise CheckpointError(f"--resume: checkpoint {path} was written with other settings ({shown}); use the "
                              f"same flags, or another --run_name")
    return state


def restore(method, state: dict) -> None:
    """Put the saved state into a freshly built method and restore the RNGs."""
    vars(method).update(state["method"])
    set_rng_state(state["rng"])
