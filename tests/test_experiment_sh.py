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
               EXTRA=f"--data_dir {mnist_dir} --out_dir {tmp_path} --device cpu")
    out = subprocess.run(["bash", str(ROOT / "experiment.sh")], env=env, capture_output=True, text=True, cwd=ROOT)
    assert out.returncode == 0, out.stderr[-2000:]
    files = sorted((tmp_path / "results" / "mnist").glob("*.json"))
    names = [f.stem for f in files]
    assert names == ["blurry10_finetune_default_online_msz100_rnd1", "blurry10_finetune_default_online_msz100_rnd2",
                     "blurry10_rm_default_online_msz100_rnd1", "blurry10_rm_default_online_msz100_rnd2"]
    cfg = json.loads(files[2].read_text())["config"]
    assert cfg["n_epoch"] == 1 and cfg["transforms"] == [] and cfg["lr"] == 0.05
    assert "tensorboard --logdir tensorboard/mnist" in out.stdout
