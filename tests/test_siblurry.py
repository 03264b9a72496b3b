"""Si-Blurry (SPEC section 13): the split generator against values derived by hand from its draw order, the
protocol's rules on hand-made split files (updates per batch, unseen classes' logits absent, evaluation
positions, a task with no new class and an empty task), and every method end to end on real MNIST (3,000
training images) far above chance (10%), with a crash and --resume for one."""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import pytest

import main as rm_main
from methods.engine.common import Settings, method_config
from methods.engine.online_protocol import BatchStepCounter
from methods.engine.trainer import Trainer
from tests.synthetic import crash_then_resume
from utils.data.siblurry import SiBlurry, class_groups, dataset_order, make_siblurry, parse_siblurry, task_lines
from utils.data.splits import SplitError


def test_parse_and_class_budget_rounded_to_multiples_of_the_task_count():
    assert parse_siblurry("siblurry50_10") == SiBlurry(50, 10) and parse_siblurry("iblurry50_10") is None
    with pytest.raises(SplitError):
        parse_siblurry("siblurry150_10")
    # 7 classes, 2 tasks, N 50: floor(3.5) = 3 -> 2 disjoint; 5 -> 4 blurry; one class unused
    assert class_groups(7, 2, SiBlurry(50, 10)) == (2, 4)
    assert class_groups(100, 5, SiBlurry(50, 10)) == (50, 50)
    assert class_groups(10, 3, SiBlurry(0, 10)) == (0, 9)


def test_generator_on_a_class_sorted_label_list():
    """4 classes x 3 samples, sorted by class; 2 tasks, N 50, M 50, seed 1. The draws, in order:
    randperm(4) = [1, 3, 2, 0]: disjoint {1, 3}, blurry {2, 0}; the disjoint cut randint(0, 2) = 0: task 0
    none, task 1 [1, 3]; the blurry cut 1: task 0 [2], task 1 [0]. S_b = 6 blurry samples, K = 3 pooled;
    its cut 1: k = (1, 2): task 0 gives sample 6 (its first of class 2), task 1 gives 0 and 1 (class 0); the
    pool of 3 is shuffled, task 0 receives 1 of them, task 1 the other 2."""
    targets = [0, 0, 0, 1, 1, 1, 2, 2, 2, 3, 3, 3]
    s = make_siblurry(targets, 4, 2, SiBlurry(50, 50), 1)
    assert s.disjoint == [[], [1, 3]] and s.blurry == [[2], [0]]
    assert s.given == [1, 2] and s.received == [1, 2]
    assert [len(t) for t in s.tasks] == [3, 9]
    assert {7, 8} < set(s.tasks[0]) and {2, 3, 4, 5, 9, 10, 11} < set(s.tasks[1])
    pooled = (set(s.tasks[0]) - {7, 8}) | (set(s.tasks[1]) - {2, 3, 4, 5, 9, 10, 11})
    assert pooled == {6, 0, 1}
    assert sorted(s.tasks[0] + s.tasks[1]) == list(range(12))  # every image exactly once


def test_generator_on_a_shuffled_label_list_with_a_short_pool():
    """7 classes x 3 samples, shuffled; 2 tasks, N 50, M 100, seed 1. randperm(7) = [0, 6, 1, 3, 5, 2, 4]:
    disjoint {0, 6}, blurry {1, 3, 5, 2}, class 4 unused (the budget rounded to multiples of 2); disjoint cut
    1: task 0 [0], task 1 [6]; blurry cut 1: task 0 [1], task 1 [3, 5, 2]. K = all 12 blurry samples, cut 11:
    k = (11, 1). Task 0 has only 3 blurry samples (class 1: 4, 12, 19) and gives all of them, task 1 its first
    (sample 0, class 3): the pool holds 4, not 12; task 0 receives all 4, task 1 none."""
    targets = [3, 6, 0, 5, 1, 2, 4, 6, 3, 0, 2, 5, 1, 4, 0, 3, 6, 2, 5, 1, 4]
    s = make_siblurry(targets, 7, 2, SiBlurry(50, 100), 1)
    assert s.disjoint == [[0], [6]] and s.blurry == [[1], [3, 5, 2]]
    assert s.given == [3, 1] and s.received == [4, 0]
    assert set(s.tasks[0]) == {2, 9, 14, 4, 12, 19, 0}  # class 0, and the pool: class 1 and sample 0
    assert set(s.tasks[1]) == {1, 7, 16, 3, 5, 8, 10, 11, 15, 17, 18}  # class 6, classes 3, 5, 2 less sample 0
    used = s.tasks[0] + s.tasks[1]
    assert len(used) == len(set(used)) == 18 and not {6, 13, 20} & set(used)  # class 4 unused
    assert make_siblurry(targets, 7, 2, SiBlurry(50, 100), 1).tasks == s.tasks  # a seed gives one split
    assert make_siblurry(targets, 7, 2, SiBlurry(50, 100), 2).tasks != s.tasks


def test_dataset_order_and_task_lines():
    files = ["train/1/12.png", "train/0/3.png", "train/1/100.png", "train/0/7.png"]
    assert dataset_order(files) == ["train/0/3.png", "train/0/7.png", "train/1/12.png", "train/1/100.png"]
    named = ["train/b/x.png", "train/a/y.png", "train/a/b.png"]  # no index in the names: the folder order
    assert dataset_order(named) == ["train/a/b.png", "train/a/y.png", "train/b/x.png"]
    lines = task_lines([["3", "3", "5"], ["5", "1"], [], ["1"]])
    assert lines[0] == "task 0: 3 samples; new disjoint classes ['3'], new blurry classes ['5']; 0 samples of " \
                      "classes shown earlier"
    assert lines[1].startswith("task 1: 2 samples; new disjoint classes [], new blurry classes ['1']; 1 samples")
    assert lines[2].startswith("task 2: 0 samples; new disjoint classes [], new blurry classes []")


def test_batch_step_counter_runs_int_online_iter_per_batch():
    c = BatchStepCounter(2.5)
    assert [c.add(16), c.add(16), c.add(3), c.add(0)] == [2, 2, 2, 0]  # a partial batch too; int(2.5) = 2


def test_what_a_method_and_the_trainer_see_in_siblurry():
    """The stream batch (16) is the method's temporary batch, its step adds 16 - 8 memory samples; bic's own
    per-sample counter gets int(2.5) / 16; no evaluation inside a chunk for the method. The trainer chunks by
    16, two updates per chunk, evaluations every 20. Any other setting: the configuration as it is."""
    cfg = argparse.Namespace(setting="siblurry", batchsize=16, temp_batchsize=8, online_iter=2.5, eval_period=20,
                             stream_env="online", exp_name="siblurry50_10", lr=0.1, topk=1, eval_epochs="all",
                             protocol="sample_wise")
    view = method_config(cfg)
    assert (view.temp_batchsize, view.batchsize, view.online_iter, view.eval_period) == (16, 24, 2 / 16, 0)
    assert (cfg.temp_batchsize, cfg.batchsize, cfg.online_iter, cfg.eval_period) == (8, 16, 2.5, 20)
    st = Settings.from_config(cfg)
    assert (st.temp_batchsize, st.online_iter, st.eval_period, st.per_batch_iter, st.eval_after_batch) == \
        (16, 2.5, 20, True, True)
    other = argparse.Namespace(**{**vars(cfg), "setting": "iblurry", "exp_name": "iblurry50_10"})
    assert method_config(other) is other
    st = Settings.from_config(other)
    assert (st.temp_batchsize, st.per_batch_iter, st.eval_after_batch) == (8, False, False)


def test_refused_inputs_write_nothing(mnist_dir, tmp_path, capsys):
    """--online_iter below 1 (no update per batch) and an incomplete set of split files: exit 2, the reason,
    nothing written."""
    base = ["--mode", "er", "--dataset", "mnist", "--data_dir", str(mnist_dir), "--exp_name", "siblurry50_10",
            "--device", "cpu"]
    out = tmp_path / "out"
    assert rm_main.main(base + ["--online_iter", "0.5", "--out_dir", str(out)]) == 2
    assert "Si-Blurry runs int(--online_iter) updates per stream batch" in capsys.readouterr().err
    assert not out.exists()
    folder = tmp_path / "split"
    _write_split(mnist_dir, folder, [[("0", 20)], [("1", 20)]])
    (folder / SiBlurry(50, 10).train_name("mnist", 2, 1, 1)).unlink()
    assert rm_main.main(base + ["--n_tasks", "2", "--collections_dir", str(folder), "--out_dir", str(out)]) == 2
    assert "missing" in capsys.readouterr().err and not out.exists()
    gen = tmp_path / "gen"
    assert rm_main.main(base + ["--out_dir", str(gen), "--dry_run"]) == 0  # writes the 5 split files
    (gen / "collections" / "mnist" / SiBlurry(50, 10).train_name("mnist", 5, 1, 3)).unlink()
    assert rm_main.main(base + ["--out_dir", str(gen), "--run_name", "again"]) == 2
    assert "incomplete siblurry50_10 split files for seed 1" in capsys.readouterr().err
    assert not (gen / "results").exists()


def _write_split(data_dir: Path, folder: Path, per_task: list[list[tuple[str, int]]]) -> None:
    """Hand-made Si-Blurry split files: per task, (class, how many of its first training images)."""
    taken: dict[str, int] = {}
    files = {c: sorted(p.name for p in (data_dir / "mnist" / "train" / c).iterdir()) for c in "0123"}
    folder.mkdir(parents=True)
    spec = SiBlurry(50, 10)
    for t, parts in enumerate(per_task):
        recs = []
        for c, n in parts:
            start = taken.get(c, 0)
            recs += [{"file_name": f"train/{c}/{f}", "klass": int(c), "label": -1} for f in files[c][start:start + n]]
            taken[c] = start + n
        (folder / spec.train_name("mnist", len(per_task), 1, t)).write_text(json.dumps(recs))
    test = [{"file_name": f"test/{c}/{p.name}", "klass": int(c), "label": -1}
            for c in "0123" for p in sorted((data_dir / "mnist" / "test" / c).iterdir())]
    (folder / "mnist_val.json").write_text(json.dumps(test))


def test_protocol_rules_on_a_hand_made_split(mnist_dir, tmp_path, monkeypatch, one_thread):
    """Task 0: 20 images of class 0, then 20 of class 1 (after shuffling, in some order); task 1: 30 more of
    classes 0 and 1 (no new class); task 2: none; task 3: 10 of class 2. Batches of 16, online_iter 2,
    eval_period 20: batches end at 16, 32, 40 | 56, 70 | - | 80 samples, each with 2 updates; the anytime
    points at 20, 40, 60 fire after the batches ending at 32, 56, 70 (the count must exceed the multiple), and
    the one at 80 never does (80 is not above 80)."""
    folder = tmp_path / "split"
    _write_split(mnist_dir, folder, [[("0", 20), ("1", 20)], [("0", 15), ("1", 15)], [], [("2", 10)]])
    steps, seen = [], []
    orig_step, orig_point = rm_main.build_method, Trainer.anytime_point

    def spy(*a, **k):
        m = orig_step(*a, **k)
        inner = m.train_step

        def train_step(x, y, idx=None, extra=None):
            out = inner(x, y, idx, extra)
            steps.append((len(y), out[1].shape[1], len(m.exposed), int(y.max())))
            return out
        m.train_step = train_step
        return m

    def point(self, test, n):
        seen.append((n, len(steps), sorted(set(self.data.test_labels[test].tolist())), sorted(self.method.exposed)))
        return orig_point(self, test, n)
    monkeypatch.setattr(rm_main, "build_method", spy)
    monkeypatch.setattr(Trainer, "anytime_point", point)
    out = tmp_path / "out"
    assert rm_main.main(["--mode", "er", "--dataset", "mnist", "--data_dir", str(mnist_dir), "--exp_name",
                         "siblurry50_10", "--n_tasks", "4", "--collections_dir", str(folder), "--out_dir", str(out),
                         "--device", "cpu", "--batchsize", "16", "--online_iter", "2", "--eval_period", "20",
                         "--memory_size", "40", "--transforms", "--run_name", "r"]) == 0
    assert len(steps) == 2 * 6  # 6 batches (16, 16, 8 | 16, 14 | 10), 2 updates each
    # each update: the stream batch + up to --batchsize - --temp_batchsize (16 - 8) memory samples
    assert [s[0] for s in steps[:2]] == [16, 16] and all(s[0] <= 16 + 8 for s in steps)
    assert all(n_out == exposed and y_max < n_out for _, n_out, exposed, y_max in steps)  # no unseen class's logit
    assert steps[-1][1] == 3 and steps[0][1] <= 2
    assert [(n, k) for n, k, _, _ in seen] == [(20, 4), (40, 8), (60, 10)]
    assert all(test == exposed for _, _, test, exposed in seen)  # evaluated on the classes seen so far
    r = json.loads((out / "results" / "mnist" / "r.json").read_text())
    assert [p["samples"] for p in r["anytime"]] == [20, 40, 60] and len(r["task_acc"]) == 4
    assert r["config"]["batchsize"] == 16 and r["config"]["temp_batchsize"] == 8  # the flags as given
    log = (out / "logs" / "mnist" / "r.log").read_text()
    assert "Si-Blurry split: task 1: 30 samples; new disjoint classes [], new blurry classes []; 30 samples" in log
    assert "Si-Blurry split: task 2: 0 samples" in log


MODES = ("bic", "clib", "der++", "er", "ewc", "ewc++", "finetune", "gdumb", "icarl", "joint", "mir", "rm", "rwalk")
FLOOR = {"rm": 25.0, "gdumb": 25.0}  # A_last; chance is 10%; rm's and gdumb's memories train little here
AUC_FLOOR = {"rm": 18.0}  # rm trains on its memory at task ends only: its anytime points before them are low
NUMBERS = ("task_acc", "task_acc_final", "cls_acc", "A_last", "A_auc", "anytime", "memory_class_counts")


def _args(data_dir: Path, out: Path, mode: str) -> list[str]:
    return ["--mode", mode, "--dataset", "mnist", "--data_dir", str(data_dir), "--out_dir", str(out), "--exp_name",
            "siblurry50_10", "--device", "cpu", "--memory_size", "200", "--transforms", "--feature_size", "64",
            "--eval_period", "300", "--online_iter", "3", "--run_name", "r"]


@pytest.mark.parametrize("mode", MODES)
def test_every_method_runs_in_siblurry(mnist_dir, tmp_path, monkeypatch, one_thread, mode):
    assert rm_main.main(_args(mnist_dir, tmp_path / "whole", mode)) == 0
    r = json.loads((tmp_path / "whole" / "results" / "mnist" / "r.json").read_text())
    assert r["A_last"] > FLOOR.get(mode, 30.0), (mode, r["A_last"])
    assert r["config"]["setting"] == "siblurry" and r["config"]["follow"] == "clib"
    if mode != "joint":  # 3,000 stream samples: the points at 300 ... 2,700 (3,000 is not exceeded)
        assert [p["samples"] for p in r["anytime"]] == list(range(300, 3000, 300))
        assert r["A_auc"] > AUC_FLOOR.get(mode, 30.0), (mode, r["A_auc"])
    if mode != "clib":
        return
    crash_then_resume(monkeypatch, _args(mnist_dir, tmp_path / "x", mode))
    b = json.loads((tmp_path / "x" / "results" / "mnist" / "r.json").read_text())
    for k in NUMBERS:
        assert b.get(k) == r.get(k), k
