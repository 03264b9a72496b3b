"""Every method of the i-Blurry protocol end to end on real MNIST (i-Blurry-50-10, 3,000 training images):
far above chance, anytime curve complete, and a crash at the start of task 2 then --resume ends with the
numbers of the uninterrupted run (every method's state survives the checkpoint)."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

import main as rm_main
from tests.synthetic import crash_then_resume

NUMBERS = ("task_acc", "cls_acc", "A_last", "F_last", "A_auc", "anytime", "memory_class_counts")
IBLURRY_CODE = ("bic", "clib", "der++", "er", "ewc++", "gdumb", "mir", "rm")  # the methods the CLIB code has
INTENDED = ("rm", "ewc++", "mir", "clib")  # the methods --as_intended changes
# (mode, flags, crash-and-resume too): er has its SIGKILL test (tests/test_er_iblurry.py) and ewc++ as the CLIB
# code runs it equals er (below); mir keeps nothing beyond er's state; a variant whose state is its default's
# is resumed once
VARIANTS = [(m, (), m != "mir") for m in IBLURRY_CODE if m not in ("er", "ewc++")]
VARIANTS += [(m, ("--as_intended",), m in ("rm", "ewc++")) for m in INTENDED if m in IBLURRY_CODE]
# (A_last, A_auc) floors; chance is 10%. gdumb and rm train on the memory (200 samples) only at evaluations /
# task ends, and the CLIB code's rm wipes its head at every new class: its anytime accuracy collapses
FLOOR = {"gdumb": (35.0, 30.0), "rm": (35.0, 15.0)}
# every task of this subset holds 600 samples, so at --eval_period 300 each ends on an evaluation, and the CLIB
# code's rm then trains its memory epochs in eval mode (its defect, reproduced): A_last falls to about 20 in
# both codes (docs/iblurry.md). At 400 tasks 0, 2 and 4 end on a step
PERIOD = {("rm", ()): 400}


def _args(data_dir: Path, out: Path, mode: str, *extra: str) -> list[str]:
    return ["--mode", mode, "--dataset", "mnist", "--data_dir", str(data_dir), "--out_dir", str(out),
            "--exp_name", "iblurry50_10", "--device", "cpu", "--memory_size", "200", "--transforms",
            "--eval_period", str(PERIOD.get((mode, tuple(extra)), 300)), "--run_name", "r", *extra]


def _result(out: Path) -> dict:
    return json.loads((out / "results" / "mnist" / "r.json").read_text())


@pytest.mark.parametrize("mode,extra,resume", VARIANTS, ids=[m + "".join(e) for m, e, _ in VARIANTS])
def test_method_end_to_end_then_crash_and_resume(mnist_dir, tmp_path, monkeypatch, mode, extra, resume):
    assert rm_main.main(_args(mnist_dir, tmp_path / "whole", mode, *extra)) == 0
    r = _result(tmp_path / "whole")
    floor_last, floor_auc = FLOOR.get(mode, (60.0, 30.0))
    assert r["A_last"] > floor_last and r["A_auc"] > floor_auc, (mode, r["A_last"], r["A_auc"])
    period = PERIOD.get((mode, tuple(extra)), 300)
    assert len(r["anytime"]) == 3000 // period
    assert r["config"]["as_intended"] is (extra == ("--as_intended",))
    if mode == "rm" and not extra:  # TensorBoard: the anytime accuracy against the stream samples seen
        from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
        ea = EventAccumulator(str(tmp_path / "whole" / "tensorboard" / "mnist" / "r"))
        ea.Reload()
        points = [(e.step, round(e.value, 4)) for e in ea.Scalars("Metrics/AnytimeAcc")]
        assert points == [(p["samples"], round(p["acc"], 4)) for p in r["anytime"]]
        assert [s for s, _ in points] == list(range(period, 3001, period))
    if not resume:
        return
    crash_then_resume(monkeypatch, _args(mnist_dir, tmp_path / "x", mode, *extra))
    b = _result(tmp_path / "x")
    for k in NUMBERS:
        assert b[k] == r[k], (mode, k)


def test_ewcpp_as_the_clib_code_runs_it_is_er():
    """The CLIB code's Fisher never updates, so its penalty is zero: the same numbers as er, bit for bit. The
    i-Blurry golden file holds both runs (and tests/test_golden.py re-runs them), so equal entries suffice."""
    results = json.loads((Path(__file__).parent / "golden_iblurry.json").read_text())["results"]
    assert results["ewc++"] == results["er"] and results["ewc++_intended"] != results["er"]
    assert results["er"]["A_last"] > 25.0  # 1,000 images, online_iter 0.25: far from chance (10) all the same
