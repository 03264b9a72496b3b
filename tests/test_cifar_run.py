"""End to end on CIFAR-10's file format: small python-pickle archive -> utils.prepare -> main.py, 2 tasks."""
from __future__ import annotations

import json
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch

import main as rm_main
from tests.test_prepare_cifar import CIFAR10_NAMES, hand_image, hand_row, py2_pickle, standard_index
from utils.data.folder import load_split
from utils.prepare import prepare

N_TRAIN, N_TEST = 6, 2  # images per class
TRAIN_LABELS = [(7 * i) % 10 for i in range(10 * N_TRAIN)]  # classes interleaved, 12 per batch file
TEST_LABELS = [(3 * i + 1) % 10 for i in range(10 * N_TEST)]


def colour(split: str, i: int, label: int) -> tuple[int, int, int]:
    """A flat colour per class (R, G learnable), the blue channel distinct per image and split."""
    return (25 * label, 250 - 20 * label, (i * 4 + (2 if split == "test" else 0)) % 256)


def rows(split: str, labels: list[int]) -> np.ndarray:
    return np.stack([hand_row(*colour(split, i, lab)) for i, lab in enumerate(labels)])


def write_archive(tmp: Path) -> Path:
    """cifar-10-python.tar.gz holding cifar-10-batches-py/ with 5 train batches, test_batch, batches.meta."""
    folder = tmp / "build" / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    data, per = rows("train", TRAIN_LABELS), len(TRAIN_LABELS) // 5
    for b in range(5):
        part = slice(per * b, per * (b + 1))
        (folder / f"data_batch_{b + 1}").write_bytes(py2_pickle({
            b"batch_label": f"training batch {b + 1} of 5".encode(), b"labels": TRAIN_LABELS[part],
            b"data": data[part], b"filenames": [f"img_{i}.png".encode() for i in range(per)]}))
    (folder / "test_batch").write_bytes(py2_pickle({
        b"batch_label": b"testing batch 1 of 1", b"labels": TEST_LABELS,
        b"data": rows("test", TEST_LABELS), b"filenames": [b"t.png"] * len(TEST_LABELS)}))
    (folder / "batches.meta").write_bytes(py2_pickle({
        b"num_cases_per_batch": 10000, b"label_names": [n.encode() for n in CIFAR10_NAMES], b"num_vis": 3072}))
    archive = tmp / "cifar-10-python.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(folder, arcname=folder.name)
    return archive


@pytest.fixture(scope="module")
def cifar_dir(tmp_path_factory) -> Path:
    tmp = tmp_path_factory.mktemp("cifar_src")
    data_dir = tmp / "data"
    out = prepare("cifar10", source=write_archive(tmp), data_dir=data_dir,
                  expected_counts={"train": len(TRAIN_LABELS), "test": len(TEST_LABELS)}, workers=1)
    assert out == data_dir / "cifar10"
    return data_dir


def test_prepared_folder_is_cifar10(cifar_dir):
    root = cifar_dir / "cifar10"
    counts = {"train": N_TRAIN, "test": N_TEST}
    labels = {"train": TRAIN_LABELS, "test": TEST_LABELS}
    for split, n in counts.items():
        assert sorted(p.name for p in (root / split).iterdir()) == sorted(CIFAR10_NAMES)
        assert all(len(list((root / split / c).glob("*.png"))) == n for c in CIFAR10_NAMES)
        s = load_split(root, split, use_cache=False)
        assert s.images.dtype == torch.uint8 and tuple(s.images.shape) == (10 * n, 3, 32, 32)
        assert s.classes == CIFAR10_NAMES  # sorted names = the official label order
        for f, x, y in zip(s.files, s.images, s.folder_label.tolist()):
            i = standard_index(labels[split], CIFAR10_NAMES, f)
            assert labels[split][i] == y and f.startswith(f"{split}/{CIFAR10_NAMES[y]}/")
            assert np.array_equal(x.numpy(), hand_image(*colour(split, i, y)).transpose(2, 0, 1)), f
    meta = json.loads((root / "prepared.json").read_text())
    assert meta["counts"] == {split: {c: n for c in CIFAR10_NAMES} for split, n in counts.items()}
    assert json.loads((root / "classes.json").read_text()) == {str(i): c for i, c in enumerate(CIFAR10_NAMES)}


def test_two_task_disjoint_run(cifar_dir, tmp_path):
    out = tmp_path / "out"
    code = rm_main.main(["--dataset", "cifar10", "--data_dir", str(cifar_dir), "--out_dir", str(out),
                         "--device", "cpu", "--mode", "finetune", "--exp_name", "disjoint", "--n_tasks", "2",
                         "--n_cls_a_task", "5", "--n_init_cls", "10", "--model_name", "resnet32",
                         "--n_epoch", "1", "--batchsize", "16", "--memory_size", "20", "--transforms"])
    assert code == 0
    (path,) = sorted((out / "results" / "cifar10").glob("*.json"))
    res = json.loads(path.read_text())
    assert res["config"]["dataset"] == "cifar10" and res["config"]["model_name"] == "resnet32"
    tc = res["task_classes"]
    assert len(tc) == 2 and all(len(c) == 5 for c in tc)
    assert sorted(tc[0] + tc[1]) == list(range(10))
    # disjoint: task 0 is tested on its own classes, task 1 on all 10; 2 test images per class
    assert len(res["cls_acc"]) == 2 and all(len(a) == 10 for a in res["cls_acc"])
    for t, accs in enumerate(res["cls_acc"]):
        seen = {c for k in range(t + 1) for c in tc[k]}
        assert {c for c, a in enumerate(accs) if a is not None} == seen
        assert all(a in (0.0, 50.0, 100.0) for a in accs if a is not None)
    assert all(0 <= a <= 100 for a in res["task_acc"] + res["task_acc_final"])
    assert sum(res["memory_class_counts"][-1]) == 20
    # the split files: labels are the run's class order over CIFAR's folder names, per class all files
    coll = out / "collections" / "cifar10"
    label_of = {}
    for t in range(2):
        for split, n in (("train", N_TRAIN), ("test", N_TEST)):
            exp = "disjoint_" if split == "train" else ""  # test files are shared by all exps of a seed
            recs = json.loads((coll / f"cifar10_{split}_{exp}rand1_cls5_task{t}.json").read_text())
            assert len(recs) == 5 * n
            for r in recs:
                folder = r["file_name"].split("/")[1]
                assert folder in CIFAR10_NAMES and label_of.setdefault(folder, r["label"]) == r["label"]
            assert sorted({r["label"] for r in recs}) == tc[t]
    assert sorted(label_of) == sorted(CIFAR10_NAMES) and sorted(label_of.values()) == list(range(10))
