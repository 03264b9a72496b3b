"""End-to-end runs of main.py on small real subsets, outputs, and bad input refused before training."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

import main as rm_main
from tests.paths import PAPER_COLL

FAST = ["--n_epoch", "5", "--memory_size", "300"]


def run(data_dir: Path, out: Path, *extra: str, dataset: str = "fashion_mnist") -> int:
    return rm_main.main(["--dataset", dataset, "--data_dir", str(data_dir), "--out_dir", str(out),
                         "--device", "cpu", *extra])


def results(out: Path, dataset: str = "fashion_mnist") -> list[dict]:
    return [json.loads(p.read_text()) for p in sorted((out / "results" / dataset).glob("*.json"))]


def test_rm_blurry10_online_learns_fashion_mnist(fashion_dir, tmp_path):
    """RM with the paper's pipeline (uncertainty memory, cutmix + autoaug) on 3,000 real images."""
    assert run(fashion_dir, tmp_path, "--mode", "rm", *FAST) == 0
    (res,) = results(tmp_path)
    # 10 classes: chance is 10%. Measured here: A_last 57-60, A_last_final 52-55 (seeds 1, 2)
    assert res["A_last"] > 45, res["task_acc"]
    assert res["A_last_final"] > 35, res["task_acc_final"]
    for key in ("config", "task_acc", "task_acc_final", "cls_acc", "A_last", "A_avg", "F_last", "I_last",
                "A_last_final", "wall_time_s"):
        assert key in res
    assert len(res["task_acc"]) == 5 and len(res["cls_acc"]) == 5 and len(res["cls_acc"][0]) == 10
    assert all(0 <= a <= 100 for a in res["task_acc"])
    assert res["I_last"] is None  # no --joint_acc: not computed
    assert res["memory_class_counts"][-1] == [30] * 10  # 300 slots, 10 classes, balanced
    name = res["config"]["run_name"]
    assert np.allclose(np.load(tmp_path / "results" / "fashion_mnist" / f"{name}.npy"), res["task_acc"])
    assert (tmp_path / "logs" / "fashion_mnist" / f"{name}.log").read_text().count("A_last") >= 1
    assert json.loads((tmp_path / "logs" / "fashion_mnist" / f"{name}.config.json").read_text())["mode"] == "rm"
    events = list((tmp_path / "tensorboard" / "fashion_mnist" / name).glob("events.out.tfevents.*"))
    assert events and events[0].stat().st_size > 0
    # the generated split files are cached in the paper's format
    coll = sorted((tmp_path / "collections" / "fashion_mnist").glob("*.json"))
    assert len(coll) == 10 and "fashion_mnist_train_blurry10_rand1_cls2_task0.json" in [p.name for p in coll]


def test_finetune_offline_disjoint_and_reruns_never_overwrite(mnist_dir, tmp_path):
    args = ["--mode", "finetune", "--exp_name", "disjoint", "--stream_env", "offline", "--transforms",
            "--n_epoch", "5", "--memory_size", "100"]
    assert run(mnist_dir, tmp_path, *args, dataset="mnist") == 0
    assert run(mnist_dir, tmp_path, *args, dataset="mnist") == 0
    a, b = results(tmp_path, "mnist")
    assert {a["config"]["run_name"], b["config"]["run_name"]} == {
        "disjoint_finetune_default_offline_msz100_rnd1", "disjoint_finetune_default_offline_msz100_rnd1-2"}
    # same seed, same device: same numbers
    assert a["task_acc"] == b["task_acc"] and a["cls_acc"] == b["cls_acc"]
    # disjoint: task 0 is evaluated on its own two classes only, the head starts at 2 outputs
    assert sum(v is not None for v in a["cls_acc"][0]) == 2
    # fine-tuning learns the newest task and forgets old ones (100-sample random memory);
    # measured here: 90.3 and 91.7 on the newest classes, F_last 72.8
    last = [a["cls_acc"][-1][c] for c in a["task_classes"][-1]]
    assert min(last) > 75, last
    assert a["F_last"] > 10, a["F_last"]


@pytest.mark.parametrize("manager,metric", [("random", "vr"), ("reservoir", "vr"), ("uncertainty", "vr"),
                                            ("uncertainty", "vr_cutout"), ("uncertainty", "vr_autoaug")])
def test_managers_and_uncertainty_metrics_run(mnist_dir, tmp_path, manager, metric):
    assert run(mnist_dir, tmp_path, "--mode", "rm", "--mem_manage", manager, "--uncert_metric", metric,
               "--exp_name", "blurry30", "--n_epoch", "1", "--memory_size", "100", "--transforms", "cutout",
               "randaug", dataset="mnist") == 0
    (res,) = results(tmp_path, "mnist")
    assert res["config"]["mem_manage_resolved"] == manager
    counts = res["memory_class_counts"]
    assert all(sum(c) == 100 for c in counts)
    if manager == "uncertainty":  # 3,000 candidates: every class fills its 10 slots, every task
        assert all(c == [10] * 10 for c in counts)
        assert res["phase_samples"]["uncertainty_views"] > 0
    else:
        assert "uncertainty_views" not in res["phase_samples"]


def _no_results(out: Path) -> bool:
    return not (out / "results").exists() or not any((out / "results").rglob("*.json"))


BAD = [
    (["--mode", "nope"], "invalid choice"),
    (["--mem_manage", "lru"], "invalid choice"),
    (["--transforms", "mixup"], "invalid choice"),
    (["--exp_name", "blurry200"], "exp_name"),
    (["--n_tasks", "3"], "cannot be divided"),
    (["--memory_size", "999999"], "larger than"),
    (["--batchsize", "1"], "batchsize"),
    (["--n_init_cls", "50"], "n_init_cls"),
    (["--in_channels", "2"], "invalid choice"),
    (["--model_name", "vgg16"], "invalid choice"),
]


def exit_code(*args, **kw) -> int:
    """main's return code, or argparse's exit status for flags it refuses."""
    try:
        return run(*args, **kw)
    except SystemExit as e:
        return int(e.code)


@pytest.mark.parametrize("extra,msg", BAD)
def test_bad_settings_exit_2_before_training(mnist_dir, tmp_path, capsys, extra, msg):
    assert exit_code(mnist_dir, tmp_path, *extra, dataset="mnist") == 2
    assert msg in capsys.readouterr().err
    assert _no_results(tmp_path)


def test_missing_dataset_says_how_to_prepare(tmp_path, capsys):
    assert run(tmp_path / "nowhere", tmp_path, dataset="mnist") == 2
    assert "python -m utils.prepare --dataset mnist" in capsys.readouterr().err


def test_corrupt_image_is_named(mnist_dir, tmp_path, capsys):
    data = tmp_path / "data"
    shutil.copytree(mnist_dir / "mnist", data / "mnist")
    shutil.rmtree(data / "mnist" / ".cache", ignore_errors=True)
    bad = sorted((data / "mnist" / "train" / "3").iterdir())[0]
    bad.write_bytes(b"not a png at all")
    assert run(data, tmp_path / "out", dataset="mnist") == 2
    assert bad.name in capsys.readouterr().err
    assert _no_results(tmp_path / "out")


def test_split_files_that_do_not_match_the_dataset(mnist_dir, tmp_path, capsys):
    coll = PAPER_COLL
    if not coll.is_dir():
        pytest.skip("paper split files not available")
    # the paper's files name all 60,000 MNIST images; this subset has 3,000
    assert run(mnist_dir, tmp_path, "--collections_dir", str(coll), dataset="mnist") == 2
    assert "do not match" in capsys.readouterr().err
    assert _no_results(tmp_path)


def test_cuda_without_gpu(mnist_dir, tmp_path, capsys):
    import torch
    if torch.cuda.is_available():
        pytest.skip("a GPU is present")
    code = rm_main.main(["--dataset", "mnist", "--data_dir", str(mnist_dir), "--out_dir", str(tmp_path),
                         "--device", "cuda"])
    assert code == 2 and "no CUDA GPU" in capsys.readouterr().err


def test_in_channels_1_trains_a_true_grey_model(mnist_dir, tmp_path, monkeypatch):
    """--in_channels 1: mlp400 takes 784 inputs (not 3 x 784) and still learns real MNIST."""
    import methods
    built = []
    real = methods.build_method
    monkeypatch.setattr(rm_main, "build_method", lambda *a, **k: built.append(real(*a, **k)) or built[-1])
    assert run(mnist_dir, tmp_path, "--mode", "finetune", "--stream_env", "offline", "--exp_name", "blurry10",
               "--n_epoch", "3", "--memory_size", "200", "--transforms", "--in_channels", "1", dataset="mnist") == 0
    (res,) = results(tmp_path, "mnist")
    assert res["config"]["in_channels"] == 1
    assert built[0].model.input.lin.weight.shape[1] == 28 * 28
    assert res["A_last"] > 40  # chance is 10 over all classes


def test_eval_epochs_last_task_keeps_a_last_and_skips_earlier_evaluations(mnist_dir, tmp_path):
    """Evaluation does not touch training: the final task's numbers are identical, and tasks
    0-3 are evaluated once per training call instead of once per epoch."""
    args = ["--mode", "rm", "--n_epoch", "3", "--memory_size", "100", "--transforms",
            "cutmix", "autoaug"]
    assert run(mnist_dir, tmp_path / "all", *args, dataset="mnist") == 0
    assert run(mnist_dir, tmp_path / "last", *args, "--eval_epochs", "last_task", dataset="mnist") == 0
    (a,), (b,) = results(tmp_path / "all", "mnist"), results(tmp_path / "last", "mnist")
    assert b["A_last"] == a["A_last"] and b["A_last_final"] == a["A_last_final"]
    assert b["task_acc_final"] == a["task_acc_final"]
    # per task: stream pass 1 evaluation + memory epochs 3 (all) or 1 (last_task); the final task keeps 3
    n_test = a["phase_samples"]["evaluation"] // (5 * 4)
    assert a["phase_samples"]["evaluation"] == 5 * 4 * n_test
    assert b["phase_samples"]["evaluation"] == (4 * 2 + 4) * n_test
    assert [e["test_acc"] is None for e in b["epochs"][0]] == [True, True, False]
    assert "eval_epochs" in b["notes"]


def test_eval_period_records_anytime_accuracy_without_changing_training(mnist_dir, tmp_path):
    """--eval_period 500: one evaluation each time the stream samples trained on cross a multiple
    of 500 (batches hold at most 16 stream samples), on the exposed classes; A_auc is their mean;
    the run's own numbers are those of a run without it."""
    args = ["--mode", "finetune", "--n_epoch", "1", "--memory_size", "100", "--transforms"]
    assert run(mnist_dir, tmp_path / "plain", *args, dataset="mnist") == 0
    assert run(mnist_dir, tmp_path / "any", *args, "--eval_period", "500", dataset="mnist") == 0
    (a,), (b,) = results(tmp_path / "plain", "mnist"), results(tmp_path / "any", "mnist")
    assert b["task_acc"] == a["task_acc"] and b["A_last_final"] == a["A_last_final"]
    curve = b["anytime"]
    assert len(curve) >= 4 and "anytime" not in a
    assert [p["samples"] // 500 for p in curve] == list(range(1, len(curve) + 1))
    assert all(0 <= p["samples"] - 500 * (i + 1) < 16 for i, p in enumerate(curve))
    assert sorted({p["task"] for p in curve}) == list(range(5))
    assert b["A_auc"] == pytest.approx(sum(p["acc"] for p in curve) / len(curve))
    assert all(10 < p["acc"] <= 100 for p in curve)
