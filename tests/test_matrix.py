"""Every method in every setting, the cells no public code runs: ER's family (er, ewc++, mir, der++, clib) in the
task-and-epoch protocol (blurry10 online and offline, disjoint online) and the CVPR'21 code's methods (finetune,
ewc, rwalk, icarl, joint) in the sample-wise i-Blurry-50-10, end to end on real MNIST (3,000 training images),
far above chance (10%); a crash at the start of task 2 then --resume ends with the uninterrupted run's numbers
for one new cell of each protocol. The cells the public codes run are tests/test_golden.py's, test_e2e's and
test_iblurry_methods'."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

import main as rm_main
from tests.synthetic import crash_then_resume

REPLAYING = ("er", "ewc++", "mir", "der++", "clib")
TASK_END = ("finetune", "ewc", "rwalk", "icarl", "joint")
EPOCHS = {"blurry10_online": ("blurry10", "online"), "blurry10_offline": ("blurry10", "offline"),
          "disjoint_online": ("disjoint", "online")}
CELLS = [(m, s) for m in REPLAYING for s in EPOCHS] + [(m, "iblurry50_10") for m in TASK_END]
RESUMED = {("er", "blurry10_online"), ("icarl", "iblurry50_10")}
NUMBERS = ("task_acc", "task_acc_final", "cls_acc", "A_last", "A_auc", "anytime", "memory_class_counts")
# A_last floors (chance is 10%): disjoint online ends on the last task's two classes, so forgetting is the
# protocol there; joint in i-Blurry has no anytime curve (one offline task)
FLOOR = {"disjoint_online": 20.0, "mir": 30.0}


def _args(data_dir: Path, out: Path, mode: str, setting: str) -> list[str]:
    exp, env = EPOCHS.get(setting, (setting, "online"))
    extra = (["--eval_period", "300", "--online_iter", "0.25", "--n_epoch", "2"] if exp.startswith("iblurry") else
             ["--n_epoch", "1"] if env == "offline" else [])
    return ["--mode", mode, "--dataset", "mnist", "--data_dir", str(data_dir), "--out_dir", str(out), "--exp_name",
            exp, "--stream_env", env, "--device", "cpu", "--memory_size", "200", "--transforms", "--feature_size",
            "64", "--run_name", "r", *extra]


def _result(out: Path) -> dict:
    return json.loads((out / "results" / "mnist" / "r.json").read_text())


@pytest.mark.parametrize("mode,setting", CELLS, ids=[f"{m}-{s}" for m, s in CELLS])
def test_every_method_runs_in_every_setting(mnist_dir, tmp_path, monkeypatch, one_thread, mode, setting):
    assert rm_main.main(_args(mnist_dir, tmp_path / "whole", mode, setting)) == 0
    r = _result(tmp_path / "whole")
    assert r["A_last"] > FLOOR.get(setting, FLOOR.get(mode, 40.0)), (mode, setting, r["A_last"])
    assert r["config"]["follow"] == ("clib" if setting.startswith("iblurry") else "cvpr21")
    if setting.startswith("iblurry") and mode != "joint":
        assert len(r["anytime"]) == 10 and r["A_auc"] > 30.0, (mode, r["A_auc"])
    if (mode, setting) not in RESUMED:
        return
    crash_then_resume(monkeypatch, _args(mnist_dir, tmp_path / "x", mode, setting))
    b = _result(tmp_path / "x")
    for k in NUMBERS:
        assert b.get(k) == r.get(k), (mode, setting, k)
