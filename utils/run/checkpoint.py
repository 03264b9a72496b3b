"""Per-task checkpoints for --resume, as data: state dicts, tensors, numbers and strings only, written
atomically with ``torch.save`` and read with ``torch.load(weights_only=True)``, so that loading a
checkpoint never runs code."""
from __future__ import annotations

import pickle
import random
from pathlib import Path

import numpy as np
import torch

from utils.run.atomic import atomic_write

FORMAT = 2  # 1: a pickle of the whole method object (refused)
# settings that may differ between the interrupted run and its resumption
FREE_KEYS = {"resume", "run_name", "device", "device_resolved", "out_dir", "data_dir", "joint_acc_source",
             "mem_manage_resolved", "no_cache", "n_worker", "data_budget_gb", "dry_run", "dist_timeout",
             "compile", "decode_device"}
# settings added since format 2, as a checkpoint written before them ran
ADDED_KEYS = {"amp": "off"}


class CheckpointError(Exception):
    """A checkpoint that cannot be used for this command."""


def rng_state() -> dict:
    """Python, NumPy, torch (and CUDA) generator states, as plain numbers and CPU tensors."""
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    state = {"python": random.getstate(),
             "numpy": {"kind": kind, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                       "has_gauss": int(has_gauss), "gauss": float(gauss)},
             "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    random.setstate(state["python"])
    n = state["numpy"]
    np.random.set_state((n["kind"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["gauss"]))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def comparable(config: dict) -> dict:
    """The settings a resumed run must share with the run that wrote the checkpoint."""
    return {k: v for k, v in config.items() if k not in FREE_KEYS}


def save(path: Path, state: dict) -> None:
    """Write ``state`` (plain data and tensors only); the previous checkpoint stays intact until
    the new one is complete on disk."""
    atomic_write(path, lambda f: torch.save({"format": FORMAT, **state}, f))


def load(path: Path, config: dict) -> dict:
    """The checkpoint's state (tensors on the CPU), after checking that it is plain data of this
    format, written with the same settings."""
    redo = "delete it to start the run again from the beginning"
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        first = str(e).strip().splitlines()[-1][:200] if str(e).strip() else type(e).__name__
        raise CheckpointError(f"checkpoint {path} holds Python objects, not only data (tensors, numbers, strings, "
                              f"lists, dicts): loading it could run code, so it is refused ({first}). It was not "
                              f"written by this version of the tool, or it was altered; {redo}") from None
    except Exception as e:  # noqa: BLE001 - any unreadable file gets the same advice
        raise CheckpointError(f"checkpoint {path} cannot be read ({type(e).__name__}: {e}); {redo}") from None
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        got = state.get("format") if isinstance(state, dict) else type(state).__name__
        raise CheckpointError(f"checkpoint {path} has format {got!r}, this version reads format {FORMAT}; {redo}")
    want, had = comparable(config), {**ADDED_KEYS, **state["config"]}
    diff = sorted(k for k in set(want) | set(had) if want.get(k) != had.get(k))
    if diff:
        shown = ", ".join(f"{k}: {had.get(k)!r} -> {want.get(k)!r}" for k in diff[:5])
        raise CheckpointError(f"--resume: checkpoint {path} was written with other settings ({shown}); use the "
                              f"same flags, or another --run_name")
    return state
