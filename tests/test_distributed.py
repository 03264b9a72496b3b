"""One run over two processes (torchrun, gloo, on this CPU): the same steps as one process, the ranks'
shares put together as one process computes them, one set of outputs, and a rank killed mid-run."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
HERE = Path(__file__).resolve().parent / "dist"
pytestmark = pytest.mark.skipif(not torch.distributed.is_available() or not torch.distributed.is_gloo_available(),
                                reason="torch.distributed with gloo is needed")


def launch(args: list[str], nproc: int = 2, **kw) -> subprocess.Popen:
    """``torchrun --standalone --nproc_per_node nproc args`` (1 process: plain python), one thread each."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    cmd = ([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(nproc)]
           if nproc > 1 else [sys.executable])
    return subprocess.Popen(cmd + args, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, **kw)


def run(args: list[str], nproc: int = 2, timeout: float = 600) -> str:
    p = launch(args, nproc)
    out, _ = p.communicate(timeout=timeout)
    assert p.returncode == 0, out[-4000:]
    return out


def test_two_processes_take_the_same_steps_as_one_in_float64(tmp_path):
    """30 SGD steps (momentum, Nesterov, weight decay) of mlp400 with batch norm at global batch 16: two
    gloo ranks with 8 samples each end with the parameters and running statistics of one process
    to 1e-12 (relative) in float64. Exact equality is not expected: the all-reduce and the batch-norm
    statistics sum in another order. In float32 the same rounding differences flip a ReLU now and
    then, and the runs drift apart as two runs with different thread counts can."""
    one, two = tmp_path / "one.pt", tmp_path / "two.pt"
    run([str(HERE / "step.py"), str(one), "float64", "30"], nproc=1)
    run([str(HERE / "step.py"), str(two), "float64", "30"], nproc=2)
    a, b = torch.load(one), torch.load(two)
    assert a.keys() == b.keys() and any("bn.running_var" in k for k in a)
    for k in a:
        scale = a[k].double().abs().max().clamp_min(1e-12)
        assert ((a[k].double() - b[k].double()).abs().max() / scale) < 1e-12, k
    assert not torch.equal(a["input.lin.weight"], torch.load(one)["input.lin.weight"] * 0)  # trained weights


def test_rank_shares_equal_one_process(mnist_dir, tmp_path):
    """After a data-parallel task on real MNIST: the ranks hold the same model, and their shares of RM's
    12-view uncertainty, of the memory selection, of the features and of the evaluation, put together,
    equal one process's for the same model and random views."""
    out = tmp_path / "shares.json"
    run([str(HERE / "shares.py"), str(mnist_dir), str(tmp_path / "o"), str(out)])
    r = json.loads(out.read_text())
    assert r["world"] == 2 and r["param_spread"] == 0.0
    assert r["uncertainty_levels"] > 3  # not a degenerate all-equal uncertainty
    assert r["uncertainty_equal"] and r["selection_equal"] and r["n_selected"] == 200
    assert r["feature_diff"] < 1e-6
    assert r["acc"][0] == r["acc"][1] and r["cls_acc_equal"] and abs(r["loss"][0] - r["loss"][1]) < 1e-6


def rm_args(mnist_dir: Path, out: Path, name: str) -> list[str]:
    return ["main.py", "--mode", "rm", "--dataset", "mnist", "--data_dir", str(mnist_dir), "--out_dir", str(out),
            "--device", "cpu", "--n_epoch", "2", "--memory_size", "200", "--transforms", "--run_name", name]


def outputs(out: Path) -> dict[str, list[str]]:
    return {d: sorted(p.name for p in (out / d / "mnist").iterdir()) if (out / d / "mnist").exists() else []
            for d in ("results", "logs", "tensorboard", "checkpoints")}


def rank_pids(marker: str) -> list[int]:
    """The torchrun workers (``python -u main.py ...``) whose command line holds ``marker``."""
    pids = []
    for d in Path("/proc").iterdir():
        try:
            args = (d / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if d.name.isdigit() and b"-u" in args and b"main.py" in args and marker.encode() in args:
            pids.append(int(d.name))
    return pids


def test_two_process_rm_run_killed_rank_and_resume(mnist_dir, tmp_path):
    """RM on real MNIST (5 tasks) with 2 processes: one set of outputs, the world size recorded, the same
    memory class counts as 1 process and A_last within 6 points (float32 runs part by rounding, see
    above). A rank SIGKILLed after the first task: the other exits non-zero within seconds, saying to
    --resume; --resume under torchrun then ends with exactly the uninterrupted run's results."""
    out1, out2, out3 = tmp_path / "one", tmp_path / "two", tmp_path / "killed"
    run(rm_args(mnist_dir, out1, "r"), nproc=1)
    run(rm_args(mnist_dir, out2, "r"), nproc=2)
    one = json.loads((out1 / "results" / "mnist" / "r.json").read_text())
    two = json.loads((out2 / "results" / "mnist" / "r.json").read_text())
    assert outputs(out2) == {"results": ["r.json", "r.npy"], "logs": ["r.config.json", "r.log"],
                             "tensorboard": ["r"], "checkpoints": []}
    events = [len(list((o / "tensorboard" / "mnist" / "r").iterdir())) for o in (out1, out2)]
    assert events[0] == events[1], events  # rank 0's event files only (run and hparams)
    assert (two["world_size"], two["backend"], one["world_size"], one["backend"]) == (2, "gloo", 1, "none")
    assert two["memory_class_counts"] == one["memory_class_counts"]
    assert abs(two["A_last"] - one["A_last"]) < 6.0, (one["A_last"], two["A_last"])
    assert two["A_last"] > 30.0 and one["A_last"] > 30.0  # far above chance (10%)
    log = (out2 / "logs" / "mnist" / "r.log").read_text()
    assert "torchrun: 2 processes (gloo)" in log and "[rank 1]" not in log

    p = launch(rm_args(mnist_dir, out3, "r"), start_new_session=True)
    ckpt = out3 / "checkpoints" / "mnist" / "r.pt"
    t0 = time.time()
    while not ckpt.exists() and p.poll() is None and time.time() - t0 < 300:
        time.sleep(0.2)
    assert ckpt.exists(), "no checkpoint after the first task"
    pids = rank_pids(str(out3))
    assert len(pids) == 2, pids
    os.kill(max(pids), signal.SIGKILL)
    t_kill = time.time()
    text, _ = p.communicate(timeout=120)
    assert p.returncode != 0 and time.time() - t_kill < 60
    assert "the torchrun run stopped" in text and "--resume" in text and ckpt.exists()
    assert not (out3 / "results" / "mnist" / "r.json").exists()
    run(rm_args(mnist_dir, out3, "r") + ["--resume"], nproc=2)
    resumed = json.loads((out3 / "results" / "mnist" / "r.json").read_text())
    for k in ("task_acc", "task_acc_final", "cls_acc", "memory_class_counts", "A_last", "A_last_final"):
        assert resumed[k] == two[k], k
    assert not ckpt.exists()


def test_two_process_run_on_a_streamed_split_decodes_a_share_on_each_rank(mnist_dir, tmp_path):
    """A split over the data budget is streamed from disk: each of the 2 ranks decodes a share of the
    images and receives the rest from the other, and the run equals the same run held in memory."""
    mem, streamed = tmp_path / "mem", tmp_path / "streamed"
    run(rm_args(mnist_dir, mem, "r"), nproc=2)
    out = run(rm_args(mnist_dir, streamed, "r") + ["--data_budget_gb", "0.0001"], nproc=2)
    a = json.loads((mem / "results" / "mnist" / "r.json").read_text())
    b = json.loads((streamed / "results" / "mnist" / "r.json").read_text())
    assert "streamed from disk" in (streamed / "logs" / "mnist" / "r.log").read_text(), out[-2000:]
    for k in ("task_acc", "task_acc_final", "cls_acc", "memory_class_counts", "A_last"):
        assert a[k] == b[k], k
    per_rank = b["decoded_train_images_per_rank"]
    # one process decodes each of the 3000 training images it touches at least once; each rank far fewer
    assert len(per_rank) == 2 and all(0 < n < 0.9 * 3000 for n in per_rank), per_rank
    assert "decoded_train_images_per_rank" not in a


def test_batch_that_does_not_split_over_the_ranks_is_refused(mnist_dir, tmp_path):
    """--batchsize is the global batch: 15 over 2 processes is refused on every rank, nothing written."""
    p = launch(rm_args(mnist_dir, tmp_path, "b") + ["--batchsize", "15"])
    text, _ = p.communicate(timeout=300)
    assert p.returncode != 0 and "must split evenly over the 2 torchrun processes" in text
    assert not (tmp_path / "logs").exists() and not (tmp_path / "results").exists()
