"""experiment.sh sweeps seeds and modes by calling main.py only."""
import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_sweep_two_seeds_two_modes(mnist_dir, tmp_path):
    env = dict(os.environ, PY=sys.executable, SEEDS="1 2", MODES="finetune rm", DATASET="mnist", TRANS="",
               N_EPOCH_OVERRIDE="1", MEM_SIZE="100",
               OUT_DIR=str(tmp_path), EXTRA=f"--data_dir {mnist_dir} --device cpu")
    out = subprocess.run(["bash", str(ROOT / "experiment.sh")], env=env, capture_output=True, text=True, cwd=ROOT)
    assert out.returncode == 0, out.stderr[-2000:]
    files = sorted((tmp_path / "results" / "mnist").glob("*.json"))
    names = [f.stem for f in files]
    assert names == ["blurry10_finetune_default_online_msz100_rnd1", "blurry10_finetune_default_online_msz100_rnd2",
                     "blurry10_rm_default_online_msz100_rnd1", "blurry10_rm_default_online_msz100_rnd2"]
    cfg = json.loads(files[2].read_text())["config"]
    assert cfg["n_epoch"] == 1 and cfg["transforms"] == [] and cfg["lr"] == 0.05
    assert f"tensorboard --logdir {tmp_path}/tensorboard/mnist" in out.stdout
    # the summary of the sweep: one row per mode, 2 seeds each
    assert "| finetune / random / none | " in out.stdout and "| rm / uncertainty / none | " in out.stdout
    assert out.stdout.count(" (2) |") == 4  # A_last and A_last_final rows


def test_parallel_sweep_completes_shares_no_file_and_a_rerun_does_nothing(mnist_dir, tmp_path):
    env = dict(os.environ, PY=sys.executable, SEEDS="1", MODES="finetune gdumb", DATASET="mnist", TRANS="",
               N_EPOCH_OVERRIDE="1", MEM_SIZE="100", JOBS="2", OUT_DIR=str(tmp_path),
               EXTRA=f"--data_dir {mnist_dir} --device cpu")
    out = subprocess.run(["bash", str(ROOT / "experiment.sh")], env=env, capture_output=True, text=True, cwd=ROOT)
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-2000:]
    assert "=== done: finetune seed 1" in out.stdout and "=== done: gdumb seed 1" in out.stdout
    names = ["blurry10_finetune_default_online_msz100_rnd1", "blurry10_gdumb_default_online_msz100_rnd1"]
    files = {p.relative_to(tmp_path): p.stat().st_mtime_ns for p in tmp_path.rglob("*") if p.is_file()}
    for sub in ("results", "logs", "tensorboard"):
        owners = [[n for n in names if n in str(f)] for f in files if f.parts[0] == sub]
        assert owners and all(len(o) == 1 for o in owners)  # every file belongs to exactly one run
    assert sorted(p.stem for p in (tmp_path / "results" / "mnist").glob("*.json")) == names
    assert not list(tmp_path.rglob("*.pt")) and not list(tmp_path.rglob("*.lock"))
    again = subprocess.run(["bash", str(ROOT / "experiment.sh")], env=env, capture_output=True, text=True, cwd=ROOT)
    assert again.returncode == 0
    after = {p.relative_to(tmp_path): p.stat().st_mtime_ns for p in tmp_path.rglob("*") if p.is_file()}
    # nothing trained again: results, tensorboard and logs untouched (configs are rewritten only by runs)
    assert {f: m for f, m in after.items() if f.parts[0] in ("results", "tensorboard")} == \
        {f: m for f, m in files.items() if f.parts[0] in ("results", "tensorboard")}
