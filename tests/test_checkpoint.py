"""Checkpoints are data: every method's checkpoint holds only tensors and plain values, loads with
weights_only=True, and a checkpoint crafted to run code on load is refused (exit 2) without running it."""
from __future__ import annotations

import os
import pickle
import random
from pathlib import Path

import numpy as np
import pytest
import torch

import main as rm_main
from utils.run import checkpoint

PLAIN = (str, int, float, bool, type(None), torch.Tensor)


def plain_only(obj, path: str = "") -> list[str]:
    """Where ``obj`` holds anything but dicts, lists, tuples, tensors, numbers, strings and None."""
    if isinstance(obj, dict):
        return [p for k, v in obj.items() for p in plain_only(k, f"{path}/key") + plain_only(v, f"{path}/{k}")]
    if isinstance(obj, (list, tuple)):
        return [p for i, v in enumerate(obj) for p in plain_only(v, f"{path}[{i}]")]
    return [] if isinstance(obj, PLAIN) else [f"{path}: {type(obj).__name__}"]


def _args(data_dir: Path, out: Path, mode: str, *extra: str) -> list[str]:
    return ["--mode", mode, "--dataset", "mnist", "--data_dir", str(data_dir), "--out_dir", str(out), "--device", "cpu",
            "--n_epoch", "1", "--memory_size", "100", "--run_name", "r", *extra]


@pytest.mark.parametrize("mode,extra", [("rm", ["--transforms", "cutmix"]), ("ewc", []),
                                        ("rwalk", ["--rwalk_score", "paper", "--reg_coef", "0.01"]),
                                        ("icarl", ["--feature_size", "16"]), ("bic", ["--distilling"]),
                                        ("gdumb", []), ("joint", [])])
def test_every_methods_checkpoint_is_plain_data(mnist_dir, tmp_path, monkeypatch, mode, extra):
    saved = []
    real = checkpoint.save

    def keep(path, state):
        real(path, state)
        saved.append(torch.load(path, map_location="cpu", weights_only=True))
    monkeypatch.setattr(checkpoint, "save", keep)
    assert rm_main.main(_args(mnist_dir, tmp_path, mode, "--exp_name", "disjoint", *extra)) == 0
    assert len(saved) == (1 if mode == "joint" else 5)
    for state in saved:
        assert plain_only(state) == []
        assert state["format"] == checkpoint.FORMAT and set(state) == {"format", "task", "method", "trainer", "rng",
                                                                         "config", "wall_s"}
        m = state["method"]
        assert {"model", "head", "n_out", "optimizer", "scheduler", "memory", "exposed", "extra"} <= set(m)
        assert all(isinstance(v, torch.Tensor) for v in m["model"].values())
    last = saved[-1]["method"]["extra"]
    if mode in ("ewc", "rwalk"):
        assert len(last["penalty"]["slots"]) == 1  # online: one slot, replaced after every call
    if mode == "rwalk":
        assert last["steps"] > 0 and last["score"] is not None
    if mode == "bic":
        assert len(last["layers"]) == 5 and last["heldout"].numel() == 10  # 10% of 100, 1 per class


class RunsCode:
    """Unpickling this calls os.system: what a checkpoint from elsewhere could do."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def test_a_checkpoint_that_would_run_code_is_refused_without_running_it(mnist_dir, tmp_path, capsys):
    marker = tmp_path / "code_ran"
    ckpt = tmp_path / "out" / "checkpoints" / "mnist" / "r.pt"
    ckpt.parent.mkdir(parents=True)
    torch.save({"format": checkpoint.FORMAT, "task": 0, "method": RunsCode(marker)}, ckpt)
    with open(tmp_path / "probe.pkl", "wb") as f:  # the payload is real: plain unpickling runs it
        pickle.dump(RunsCode(tmp_path / "probe_ran"), f)
    with open(tmp_path / "probe.pkl", "rb") as f:
        pickle.load(f)
    assert (tmp_path / "probe_ran").exists()
    rc = rm_main.main(_args(mnist_dir, tmp_path / "out", "finetune", "--resume"))
    err = capsys.readouterr().err
    assert rc == 2, err
    assert f"checkpoint {ckpt} holds Python objects, not only data" in err and "refused" in err
    assert "delete it to start the run again" in err
    assert not marker.exists()
    assert not (tmp_path / "out" / "results").exists() and not (tmp_path / "out" / "logs" / "mnist" / "r.lock").exists()


def test_a_checkpoint_of_another_format_is_refused(mnist_dir, tmp_path, capsys):
    ckpt = tmp_path / "checkpoints" / "mnist" / "r.pt"
    ckpt.parent.mkdir(parents=True)
    torch.save({"format": 1, "task": 0}, ckpt)
    assert rm_main.main(_args(mnist_dir, tmp_path, "finetune", "--resume")) == 2
    assert "has format 1, this version reads format 2" in capsys.readouterr().err


def test_rng_state_round_trips_through_a_weights_only_file(tmp_path):
    random.seed(5)
    np.random.seed(6)
    torch.manual_seed(7)
    np.random.randn()  # a cached Gaussian in NumPy's state
    torch.save(checkpoint.rng_state(), tmp_path / "rng.pt")
    want = (random.random(), np.random.randn(), np.random.rand(), torch.rand(3).tolist())
    checkpoint.set_rng_state(torch.load(tmp_path / "rng.pt", weights_only=True))
    assert (random.random(), np.random.randn(), np.random.rand(), torch.rand(3).tolist()) == want


def test_speed_flags_may_change_on_resume_and_older_checkpoints_mean_fp32(tmp_path):
    """--compile and --decode_device change speed (and float rounding), so a resumption may change them; --amp
    changes the arithmetic, so it may not; a checkpoint written before --amp existed ran fp32."""
    path = tmp_path / "ck.pt"
    old = {"mode": "rm", "lr": 0.05}  # written before --compile, --decode_device and --amp existed
    checkpoint.save(path, {"config": old, "task": 0})
    now = {**old, "compile": "graphs", "decode_device": "cuda", "amp": "off"}
    assert checkpoint.load(path, now)["task"] == 0
    with pytest.raises(checkpoint.CheckpointError, match="amp: 'off' -> 'bf16'"):
        checkpoint.load(path, {**now, "amp": "bf16"})
    checkpoint.save(path, {"config": checkpoint.comparable(now), "task": 1})
    assert checkpoint.load(path, {**now, "compile": "off", "decode_device": "cpu"})["task"] == 1
