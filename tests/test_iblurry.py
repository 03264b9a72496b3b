"""i-Blurry-N-M splits (SPEC section 12): CIFAR-10 n50_m10's statistics, hand-sized cases, names, CLIB files."""
from __future__ import annotations

import json
from collections import Counter

import pytest

from utils.data.iblurry import (IBlurry, clib_train_name, make_iblurry, parse_iblurry, read_clib_collection,
                                task_summary)
from utils.data.splits import SplitError, folder_of


def fake_cifar10() -> dict[str, list[str]]:
    """CIFAR-10's training set as class folder -> files: 10 classes of 5,000 images."""
    names = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
    return {c: [f"train/{c}/{i:05d}.png" for i in range(5000)] for c in names}


def test_cifar10_n50_m10_rebuilds_the_statistics_spec_gives():
    """T=5, seed 1: every task holds exactly 10,000 samples: 5,000 of one disjoint class, 4,500 of its
    home blurry class plus its share of the pool, and 500 pooled blurry samples (about 100 of each
    blurry class); every training image appears exactly once."""
    files = fake_cifar10()
    tasks, role, home = make_iblurry(files, 5, IBlurry(50, 10), seed=1)
    assert [len(t) for t in tasks] == [10000] * 5
    assert Counter(role.values()) == {"disjoint": 5, "blurry": 5}
    every = [f for t in tasks for f in t]
    assert len(every) == len(set(every)) == 50000
    for t, stream in enumerate(tasks):
        counts = Counter(folder_of(f) for f in stream)
        disjoint = [c for c in counts if role[c] == "disjoint"]
        blurry_home = [c for c in counts if role[c] == "blurry" and home[c] == t]
        assert len(disjoint) == 1 and counts[disjoint[0]] == 5000 and home[disjoint[0]] == t
        assert len(blurry_home) == 1 and 4500 < counts[blurry_home[0]] < 4650  # 4,500 + its pooled share
        pooled = {c: n for c, n in counts.items() if role[c] == "blurry"}
        assert sum(pooled.values()) == 4500 + 500  # the home class kept at home + the task's 500 pooled
        assert all(60 < n < 140 for c, n in pooled.items() if c != blurry_home[0])  # about 100 each
        assert set(counts) == {disjoint[0], *pooled}  # no disjoint class of another task
    # the disjoint classes never leave their task; each blurry class keeps 90% at home
    for c, r in role.items():
        per_task = [sum(folder_of(f) == c for f in t) for t in tasks]
        assert per_task[home[c]] == (5000 if r == "disjoint" else pytest.approx(4600, abs=50))
    assert make_iblurry(files, 5, IBlurry(50, 10), seed=1)[0] == tasks  # the seed decides everything
    assert make_iblurry(files, 5, IBlurry(50, 10), seed=2)[0] != tasks
    lines = task_summary(tasks, role, home)
    assert len(lines) == 5 and "10000 samples" in lines[0] and "pooled" in lines[0]


def test_hand_sized_split():
    """4 classes of 10, T=2, n50_m20: one disjoint and one blurry class per task. The disjoint class has
    its 10 in its task only; each blurry class keeps 8 at home and pools 2; the pool of 4 is cut into
    2 chunks of 2, one per task: each task = 10 + 8 + 2 = 20 samples."""
    files = {c: [f"train/{c}/{i}.png" for i in range(10)] for c in "abcd"}
    tasks, role, home = make_iblurry(files, 2, IBlurry(50, 20), seed=0)
    assert [len(t) for t in tasks] == [20, 20]
    counts = [Counter(folder_of(f) for f in t) for t in tasks]
    for c in "abcd":
        per_task = [counts[t][c] for t in range(2)]
        assert sum(per_task) == 10
        if role[c] == "disjoint":
            assert per_task[home[c]] == 10
        else:
            assert per_task[home[c]] >= 8  # 8 kept, plus whatever of its 2 pooled came back home
    for t in range(2):
        kept = sum(8 if role[c] == "blurry" else 10 for c in "abcd" if home[c] == t)
        assert len(tasks[t]) - kept == 2  # the task's chunk of the pool
    assert Counter(role.values()) == {"disjoint": 2, "blurry": 2}


def test_n0_and_n100_are_all_blurry_and_disjoint():
    files = fake_cifar10()
    tasks, role, home = make_iblurry(files, 5, IBlurry(0, 10), seed=3)
    assert set(role.values()) == {"blurry"} and Counter(home.values()) == {t: 2 for t in range(5)}
    tasks, role, home = make_iblurry(files, 5, IBlurry(100, 0), seed=3)
    assert set(role.values()) == {"disjoint"}
    for t, stream in enumerate(tasks):  # the disjoint split: 2 whole classes per task
        assert Counter(folder_of(f) for f in stream) == {c: 5000 for c in role if home[c] == t}


def test_names_and_settings_that_do_not_split():
    assert parse_iblurry("iblurry50_10") == IBlurry(50, 10) and parse_iblurry("blurry10") is None
    assert parse_iblurry("disjoint") is None and IBlurry(50, 10).name == "iblurry50_10"
    with pytest.raises(SplitError, match="percentages"):
        parse_iblurry("iblurry150_10")
    with pytest.raises(SplitError, match="do not split equally over the tasks"):
        make_iblurry(fake_cifar10(), 3, IBlurry(50, 10), seed=1)  # 5 disjoint classes over 3 tasks
    assert clib_train_name("cifar10", 5, IBlurry(50, 10), 1, 0) == "cifar10_split5_n50_m10_rand1_task0.json"


def test_reads_the_clib_code_split_files(tmp_path):
    """The CLIB code's files: a JSON list of {filepath or file_name, klass, label} per task, and <ds>_val.json."""
    spec = IBlurry(50, 10)
    for t in range(2):
        recs = [{"filepath": f"train/{c}/{t}{i}.png", "klass": c, "label": 0} for c in "ab" for i in range(3)]
        (tmp_path / clib_train_name("mnist", 2, spec, 1, t)).write_text(json.dumps(recs))
    (tmp_path / "mnist_val.json").write_text(json.dumps([{"file_name": "test/a/0.png", "klass": "a", "label": 0}]))
    train, test = read_clib_collection(tmp_path, "mnist", 2, spec, 1)
    assert [len(t) for t in train] == [6, 6] and train[1][0]["file_name"] == "train/a/10.png"
    assert test == [{"file_name": "test/a/0.png", "klass": "a", "label": 0}]
    with pytest.raises(SplitError, match="missing the CLIB split file"):
        read_clib_collection(tmp_path, "mnist", 3, spec, 1)
    (tmp_path / "mnist_val.json").write_text(json.dumps([{"klass": "a"}]))
    with pytest.raises(SplitError, match="needs file_name"):
        read_clib_collection(tmp_path, "mnist", 2, spec, 1)
