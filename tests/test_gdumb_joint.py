"""GDumb (class-balanced memory, re-initialised model) and joint (+ --joint_acc auto)."""
from __future__ import annotations

import json
from pathlib import Path

import torch

import main as rm_main
from methods import build_method
from methods.engine.trainer import Settings, Trainer
from models.mlp import FinalBlock


def _run(data_dir: Path, out: Path, *extra: str) -> int:
    return rm_main.main(["--dataset", "mnist", "--data_dir", str(data_dir), "--out_dir", str(out), "--device", "cpu",
                         "--transforms", *extra])


def _results(out: Path) -> dict[str, dict]:
    return {p.stem: json.loads(p.read_text()) for p in (out / "results" / "mnist").glob("*.json")}


def test_gdumb_rebuilds_the_model_and_keeps_a_balanced_memory(mnist_dir):
    cfg = rm_main.resolve(rm_main.base_parser(rm_main.method_names()).parse_args(
        ["--mode", "gdumb", "--dataset", "mnist", "--data_dir", str(mnist_dir), "--n_epoch", "1",
         "--memory_size", "100", "--device", "cpu", "--transforms"]))
    device, data, tasks = rm_main.build_run(cfg)
    m = build_method("gdumb", cfg, data, device)
    assert m.mem_manage == "class_balanced"
    assert m.training_calls(True) == m.training_calls(False) == [("memory", 1)]  # the stream is never trained on
    trainer = Trainer(m, data, tasks, Settings.from_config(cfg))
    models = []
    for t, (stream, test) in enumerate(tasks[:2]):
        cand = torch.cat([stream, m.memory.indices])
        avail = torch.bincount(data.train_labels[cand], minlength=10)
        before = m.model
        trainer.run_task(t)
        kept = m.memory.indices
        assert trainer.samples["memory"] == 96 * (t + 1)  # 6 batches of 16 of the 100 memory samples
        assert "stream" not in trainer.samples
        assert m.model is not before  # rebuilt for this task's training
        models.append(m.model)
        assert isinstance(m.model.fc, FinalBlock)
        counts = torch.bincount(data.train_labels[kept], minlength=10)
        # class-balanced: min(10, available) of every class, the rest filled at random
        assert counts.sum() == 100 and bool((counts >= torch.clamp(avail, max=10)).all()), (counts, avail)
    assert models[0] is not models[1]


def test_joint_then_joint_acc_auto(mnist_dir, tmp_path, capsys):
    assert _run(mnist_dir, tmp_path, "--mode", "finetune", "--n_epoch", "1", "--joint_acc", "auto") == 2
    assert "no joint result" in capsys.readouterr().err
    assert _run(mnist_dir, tmp_path, "--mode", "joint", "--n_epoch", "3") == 0
    (joint,) = _results(tmp_path).values()
    assert len(joint["task_acc"]) == 1 and sum(v is not None for v in joint["cls_acc"][0]) == 10
    assert joint["A_last"] > 50  # 3,000 MNIST digits, 3 epochs; measured 65.4 here; chance 10
    assert _run(mnist_dir, tmp_path, "--mode", "finetune", "--n_epoch", "1", "--joint_acc", "auto") == 0
    ft = _results(tmp_path)["blurry10_finetune_default_online_msz500_rnd1"]
    assert ft["config"]["joint_acc"] == joint["A_last"]
    assert ft["I_last"] == joint["A_last"] - ft["A_last"]
    # without a joint accuracy, I_last is null and its note says why
    assert _run(mnist_dir, tmp_path, "--mode", "finetune", "--n_epoch", "1", "--run_name", "no_joint") == 0
    nj = _results(tmp_path)["no_joint"]
    assert nj["I_last"] is None and "joint" in nj["notes"]["I_last"]
    assert "I_last n/a" in (tmp_path / "logs" / "mnist" / "no_joint.log").read_text()
    assert ft["config"]["joint_acc_source"].endswith("blurry10_joint_default_online_msz500_rnd1.json")
