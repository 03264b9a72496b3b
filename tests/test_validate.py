"""configuration.validate: the inputs a new user tried that used to reach a traceback or a meaningless
result, output paths, lists, combinations, ignored method flags, and the ranges in the help text."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

import main as rm_main
from configuration.config import base_parser
from configuration.validate import RANGES, Range
from methods import method_names

BASE = ["--device", "cpu", "--n_epoch", "1", "--memory_size", "100", "--transforms"]


def run(mnist_dir: Path, out: Path, *extra: str) -> int:
    return rm_main.main(["--dataset", "mnist", "--data_dir", str(mnist_dir), "--out_dir", str(out), *BASE, *extra])


# the examples of the issue, and their kin: each exits 2 with the problem named and nothing written
CASES = [
    (["--rnd_seed", "-1"], "--rnd_seed must be >= 0 and <= 4294967295 (got -1)"),
    (["--rnd_seed", str(2 ** 32)], "--rnd_seed must be >= 0"),
    (["--mode", "icarl", "--feature_size", "0"], "--feature_size must be >= 1"),
    (["--topk", "50"], "--topk 50 exceeds the 10 classes of mnist"),
    (["--joint_acc", "250"], "--joint_acc must be >= 0 and <= 100 (got 250.0)"),
    (["--joint_acc", "nan"], "--joint_acc must be >= 0 and <= 100 (got nan)"),
    (["--lr", "inf"], "--lr must be > 0 and <= 10 (got inf)"),
    (["--mode", "ewc", "--reg_coef", "-3"], "--reg_coef must be >= 0"),
    (["--data_budget_gb", "nan"], "--data_budget_gb must be >= 0"),
    (["--transforms", "cutmix", "cutmix"], "--transforms lists cutmix more than once"),
    (["--stream_env", "offline", "--eval_period", "100"], "--eval_period evaluates during the online stream pass, "
                                                           "and offline runs have none"),
    (["--mode", "gdumb", "--eval_period", "100"], "--mode gdumb trains on none"),
    (["--mode", "gdumb", "--memory_size", "0"], "--memory_size 0 trains nothing"),
    (["--eval_period", "5000"], "--eval_period 5000 is longer than the 3000 stream samples"),
    (["--batchsize", "4000"], "--batchsize 4000 is larger than the 3000 training samples"),
    (["--input_size", "512"], "mlp400 on 512x512 images would need 314,572,800 input weights"),
    (["--model_name", "resnet18", "--input_size", "4"], "give --input_size 8 or more"),
    (["--run_name", "../../elsewhere"], "--run_name '../../elsewhere' must be a plain name"),
    (["--dataset", "../mnist"], "--dataset '../mnist' must be a plain name"),
]


@pytest.mark.parametrize("extra,words", CASES, ids=[" ".join(c[0]) for c in CASES])
def test_refused_with_the_problem_named(mnist_dir, tmp_path, capsys, extra, words):
    rc = run(mnist_dir, tmp_path / "out", *extra)
    err = capsys.readouterr().err
    assert rc == 2 and words in err, err
    assert "Traceback" not in err
    assert not any((tmp_path / "out" / d).exists() for d in ("results", "logs", "tensorboard", "checkpoints"))


def test_output_folders_that_cannot_be_written(mnist_dir, tmp_path, capsys):
    afile = tmp_path / "afile"
    afile.write_text("x")
    assert run(mnist_dir, afile) == 2
    assert f"--out_dir {afile} is a file, not a folder" in capsys.readouterr().err
    assert run(mnist_dir, afile / "below") == 2
    assert f"--out_dir {afile / 'below'} cannot be created: {afile} is a file" in capsys.readouterr().err
    assert afile.read_text() == "x"


def test_flags_the_mode_does_not_read_are_named_in_the_log(mnist_dir, tmp_path):
    assert run(mnist_dir, tmp_path, "--mode", "finetune", "--reg_coef", "5", "--distilling", "--run_name", "r") == 0
    log = (tmp_path / "logs" / "mnist" / "r.log").read_text()
    assert "[WARNING] --reg_coef is read by --mode ewc / rwalk / ewc++ only; ignored by --mode finetune" in log
    assert "[WARNING] --distilling is read by --mode bic only; ignored by --mode finetune" in log
    cfg = json.loads((tmp_path / "results" / "mnist" / "r.json").read_text())["config"]
    assert cfg["reg_coef"] == 5.0 and cfg["distilling"] is True  # recorded as given
    # the defaults of method flags are filled in for every mode, so configs stay comparable
    assert run(mnist_dir, tmp_path, "--mode", "finetune", "--run_name", "d") == 0
    d = json.loads((tmp_path / "results" / "mnist" / "d.json").read_text())["config"]
    assert (d["reg_coef"], d["rwalk_score"], d["feature_size"], d["distilling"]) == (100, "public", 2048, False)
    assert "ignored by" not in (tmp_path / "logs" / "mnist" / "d.log").read_text()


def test_grey_fold_where_it_changes_nothing_is_named_in_the_log(mnist_dir, tmp_path):
    assert run(mnist_dir, tmp_path, "--mode", "ewc", "--in_channels", "1", "--grey_fold", "all", "--run_name", "g") == 0
    log = (tmp_path / "logs" / "mnist" / "g.log").read_text()
    assert "[WARNING] --grey_fold all has no effect here" in log and "--in_channels 1" in log
    assert run(mnist_dir, tmp_path, "--mode", "ewc", "--grey_fold", "all", "--run_name", "h") == 0
    assert "has no effect" not in (tmp_path / "logs" / "mnist" / "h.log").read_text()  # mlp400, grey, sgd: folds


def test_dry_run_checks_everything_and_writes_no_run_output(mnist_dir, tmp_path, capsys):
    assert run(mnist_dir, tmp_path, "--dry_run") == 0
    out = capsys.readouterr().out
    assert "--dry_run: the settings, the data and the split are valid (5 task(s), 3000 training samples)" in out
    assert not any((tmp_path / d).exists() for d in ("results", "logs", "tensorboard", "checkpoints"))
    assert run(mnist_dir, tmp_path, "--dry_run", "--topk", "11") == 2


def test_every_numeric_flag_states_its_range_in_the_help():
    actions = {a.dest: a for a in base_parser(method_names())._actions}
    for flag, rng in RANGES.items():
        assert f"range: {rng}" in " ".join(actions[flag].help.split()), flag
        assert actions[flag].type in (int, float) or flag == "joint_acc"


def test_range_by_hand():
    r = Range(0, 10, lo_open=True)
    assert 10 in r and 1e-300 in r and 0 not in r and 10.5 not in r
    assert float("nan") not in r and float("inf") not in r and -1 not in r
    assert str(r) == "> 0 and <= 10" and str(Range(1, 4096)) == ">= 1 and <= 4096"
