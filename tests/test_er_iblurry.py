"""ER in the i-Blurry-50-10 protocol on real MNIST: the run end to end, its split files, anytime accuracy,
a SIGKILL in the middle of a task then --resume, and the settings the protocol refuses."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import main as rm_main

ROOT = Path(__file__).resolve().parents[1]
NUMBERS = ("task_acc", "cls_acc", "A_last", "F_last", "A_auc", "anytime", "memory_class_counts")


def er_args(data_dir: Path, out: Path, *extra: str) -> list[str]:
    return ["--mode", "er", "--dataset", "mnist", "--data_dir", str(data_dir), "--out_dir", str(out),
            "--exp_name", "iblurry50_10", "--device", "cpu", "--memory_size", "200", "--transforms",
            "--run_name", "r", *extra]


def result(out: Path) -> dict:
    return json.loads((out / "results" / "mnist" / "r.json").read_text())


def test_er_iblurry_end_to_end_then_killed_and_resumed(mnist_dir, tmp_path):
    """3,000 training images (300 per class) in 5 tasks of 600: one disjoint and one home blurry class per
    task, 10% of the blurry classes pooled. Anytime accuracy every 100 samples (30 points); A_last far
    above chance; killed in task 2 and resumed, the run ends with the uninterrupted numbers."""
    env = dict(os.environ, OMP_NUM_THREADS="1")
    cmd = [sys.executable, str(ROOT / "main.py")]
    whole = subprocess.run(cmd + er_args(mnist_dir, tmp_path / "whole"), env=env, capture_output=True, text=True)
    assert whole.returncode == 0, whole.stderr[-3000:]
    r = result(tmp_path / "whole")
    assert [len(t) for t in r["task_classes"]] == [6, 1, 1, 1, 1]  # 1 disjoint + 5 blurry classes seen in task 0
    assert len(r["anytime"]) == 30 and [p["samples"] for p in r["anytime"]][:3] == [100, 200, 300]
    assert r["A_last"] > 60.0 and r["A_auc"] > 40.0  # chance: 10%
    assert r["config"]["opt_name"] == "adam" and r["config"]["lr"] == 3e-4 and r["config"]["temp_batchsize"] == 8
    assert sum(r["memory_class_counts"][-1]) == 192  # the reservoir holds --memory_size - --temp_batchsize
    splits = sorted(p.name for p in (tmp_path / "whole" / "collections" / "mnist").iterdir())
    assert splits == [f"mnist_split5_n50_m10_rand1_task{t}.json" for t in range(5)] + ["mnist_val.json"]

    args = er_args(mnist_dir, tmp_path / "x")
    log, ckpt = tmp_path / "x" / "logs" / "mnist" / "r.log", tmp_path / "x" / "checkpoints" / "mnist" / "r.pt"
    p = subprocess.Popen(cmd + args, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    while time.time() < deadline and not (log.exists() and "Task 2:" in log.read_text()):
        time.sleep(0.02)
    time.sleep(0.5)  # in the middle of task 2
    os.kill(p.pid, signal.SIGKILL)
    p.wait()
    assert ckpt.exists() and "Task 2 done" not in log.read_text()
    again = subprocess.run(cmd + args + ["--resume"], env=env, capture_output=True, text=True)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "continuing after task 1" in log.read_text()
    b = result(tmp_path / "x")
    for k in NUMBERS:
        assert b[k] == r[k], k


def test_settings_the_protocol_refuses(mnist_dir, tmp_path, capsys):
    """What remains refused now that every method runs in every setting (tests/test_matrix.py)."""
    for extra, words in [(["--exp_name", "blurry10", "--mode", "rm", "--as_intended"], "sample-wise protocol only"),
                         (["--exp_name", "blurry10", "--stream_env", "offline", "--mode", "gdumb", "--eval_period",
                           "100"], "drop --eval_period"),
                         (["--stream_env", "offline"], "online protocol"),
                         (["--temp_batchsize", "32"], "exceeds --batchsize"),
                         (["--mem_manage", "uncertainty"], "drop --mem_manage"),
                         (["--exp_name", "iblurry150_10"], "unknown --exp_name"),
                         (["--online_iter", "0"], "--online_iter must be")]:
        assert rm_main.main(er_args(mnist_dir, tmp_path) + extra) == 2, extra
        assert words in capsys.readouterr().err, extra
    assert not (tmp_path / "results").exists() and not (tmp_path / "logs").exists()
