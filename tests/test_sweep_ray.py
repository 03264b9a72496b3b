"""ENGINE=ray bash experiment.sh: a local Ray sweep of 4 small real-MNIST runs, 2 at a time; a run killed
in the middle is retried with --resume and ends as an uninterrupted run; a second sweep writes nothing."""
from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def sweep_env(mnist_dir: Path, out: Path, **extra: str) -> dict[str, str]:
    return {**os.environ, "ENGINE": "ray", "MODES": "rm finetune", "SEEDS": "1 2", "DATASET": "mnist", "TRANS": "",
            "EXTRA": f"--data_dir {mnist_dir} --n_epoch 2 --memory_size 100", "OUT_DIR": str(out), "RAY_CPUS": "2",
            "CPUS_PER_RUN": "1", "PY": sys.executable, **extra}


def snapshot(*folders: Path) -> dict[str, tuple[int, int, str]]:
    """Every file under ``folders``: size, modification time and SHA-1."""
    out = {}
    for folder in folders:
        for p in sorted(folder.rglob("*")):
            if p.is_file():
                out[str(p)] = (p.stat().st_size, p.stat().st_mtime_ns, hashlib.sha1(p.read_bytes()).hexdigest())
    return out


def worker_pids(out: Path, mode: str, seed: str) -> list[int]:
    """main.py processes of the sweep writing to ``out`` for (mode, seed)."""
    pids = []
    for d in Path("/proc").iterdir():
        try:
            args = (d / "cmdline").read_bytes().decode(errors="replace").split("\0")
        except OSError:
            continue
        if not (d.name.isdigit() and any(a.endswith("main.py") for a in args) and str(out) in args):
            continue
        if args[args.index("--mode") + 1:][:1] == [mode] and args[args.index("--rnd_seed") + 1:][:1] == [seed]:
            pids.append(int(d.name))
    return pids


def test_local_ray_sweep_retries_a_killed_run_and_skips_finished_ones(mnist_dir, tmp_path):
    pytest.importorskip("ray")
    ref_out, out = tmp_path / "ref", tmp_path / "sweep"
    ref = subprocess.run([sys.executable, "main.py", "--mode", "rm", "--dataset", "mnist", "--exp_name", "blurry10",
                          "--stream_env", "online", "--rnd_seed", "1", "--transforms", "--out_dir", str(ref_out),
                          "--data_dir", str(mnist_dir), "--n_epoch", "2", "--memory_size", "100"],
                         cwd=ROOT, env={**os.environ, "OMP_NUM_THREADS": "1"}, capture_output=True, text=True)
    assert ref.returncode == 0, ref.stderr[-3000:]

    p = subprocess.Popen(["bash", "experiment.sh"], cwd=ROOT, env=sweep_env(mnist_dir, out), stdout=subprocess.PIPE,
                         stderr=subprocess.STDOUT, text=True)
    ckpt_dir = out / "checkpoints" / "mnist"
    t0, killed = time.time(), []
    while p.poll() is None and time.time() - t0 < 300 and not killed:
        if any("_rm_" in c.name and "rnd1" in c.name for c in ckpt_dir.glob("*.pt")):
            for pid in worker_pids(out, "rm", "1"):
                os.kill(pid, signal.SIGKILL)
                killed.append(pid)
        time.sleep(0.1)
    text, _ = p.communicate(timeout=600)
    assert killed, "the rm seed 1 run was not caught in the middle\n" + text[-3000:]
    assert p.returncode == 0, text[-3000:]
    assert "[sweep] done 4 / running 0 / failed 0 / waiting 0 (of 4; 1 failed attempts)" in text, text[-3000:]
    assert "running 2" in text  # two runs at a time
    assert "| rm / uncertainty / none |" in text and "| finetune / random / none |" in text  # the summary table

    results = sorted((out / "results" / "mnist").glob("*.json"))
    assert len(results) == 4 and not list(ckpt_dir.glob("*.pt"))
    name = next(r.name for r in results if "_rm_" in r.name and "rnd1" in r.name)
    resumed = json.loads((out / "results" / "mnist" / name).read_text())
    plain = json.loads((ref_out / "results" / "mnist" / name).read_text())
    for k in ("task_acc", "task_acc_final", "cls_acc", "memory_class_counts", "A_last", "A_last_final"):
        assert resumed[k] == plain[k], k
    assert resumed["A_last"] > 30.0  # far above chance (10%)
    log = (out / "logs" / "mnist" / name.replace(".json", ".log")).read_text()
    assert "--resume: continuing after task" in log

    before = snapshot(out, mnist_dir)
    again = subprocess.run(["bash", "experiment.sh"], cwd=ROOT, env=sweep_env(mnist_dir, out), capture_output=True,
                           text=True, timeout=600)
    assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
    assert "done 4 / running 0 / failed 0" in again.stdout
    assert snapshot(out, mnist_dir) == before


def test_engine_ray_without_ray_says_how_to_install_it(tmp_path):
    fake = tmp_path / "noray" / "ray"
    fake.mkdir(parents=True)
    (fake / "__init__.py").write_text("raise ImportError('No module named ray')\n")
    env = {**os.environ, "ENGINE": "ray", "PY": sys.executable, "OUT_DIR": str(tmp_path / "o"),
           "PYTHONPATH": str(fake.parent)}
    r = subprocess.run(["bash", "experiment.sh"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert r.returncode == 2
    assert "ENGINE=ray needs Ray" in r.stderr and "pip install" in r.stderr
    assert not (tmp_path / "o").exists()


def test_unknown_engine_is_refused(tmp_path):
    r = subprocess.run(["bash", "experiment.sh"], cwd=ROOT, env={**os.environ, "ENGINE": "slurm", "PY": sys.executable,
                                                                 "OUT_DIR": str(tmp_path / "o")},
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 2 and "ENGINE must be local or ray" in r.stderr and not (tmp_path / "o").exists()
