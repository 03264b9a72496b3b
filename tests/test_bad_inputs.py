"""Every bad input is refused before any work: exit code 2, a message that names the problem,
nothing written to results/, and no earlier output harmed (table-driven)."""
from __future__ import annotations

import gzip
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import main as rm_main
from utils import prepare

N_TRAIN, N_TEST = 4, 2  # images per class of the tiny dataset


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> Path:
    """A valid 10-class 28x28 grey image folder named mnist, and the split files made for it."""
    root = tmp_path_factory.mktemp("tiny")
    rng = np.random.RandomState(0)
    for split, n in (("train", N_TRAIN), ("test", N_TEST)):
        for c in range(10):
            d = root / "data" / "mnist" / split / str(c)
            d.mkdir(parents=True)
            for i in range(n):
                Image.fromarray(rng.randint(0, 256, (28, 28), dtype=np.uint8)).save(d / f"{i}.png")
    out = root / "made"
    assert rm_main.main(["--dataset", "mnist", "--data_dir", str(root / "data"), "--out_dir", str(out), "--device",
                         "cpu", "--mode", "finetune", "--n_epoch", "1", "--memory_size", "10", "--transforms",
                         "--no_cache", "--exp_name", "disjoint"]) == 0
    shutil.copytree(out / "collections" / "mnist", root / "collections")
    return root


def _split_file(coll: Path, t: int, kind: str = "train") -> Path:
    pat = f"mnist_train_disjoint_rand1_cls2_task{t}.json" if kind == "train" else f"mnist_test_rand1_cls2_task{t}.json"
    return coll / pat


def _edit(coll: Path, t: int, fn) -> None:
    p = _split_file(coll, t)
    recs = json.loads(p.read_text())
    fn(recs)
    p.write_text(json.dumps(recs))


def _truncate_png(data: Path) -> None:
    p = data / "mnist" / "train" / "3" / "1.png"
    p.write_bytes(p.read_bytes()[:60])


def _garbage_png(data: Path) -> None:
    (data / "mnist" / "train" / "7" / "2.png").write_bytes(b"not an image at all")


def _empty_class(data: Path) -> None:
    for f in (data / "mnist" / "train" / "5").iterdir():
        f.unlink()


def _no_classes(data: Path) -> None:
    shutil.rmtree(data / "mnist" / "train")
    (data / "mnist" / "train").mkdir()


def _odd_size(data: Path) -> None:
    Image.fromarray(np.zeros((20, 20), dtype=np.uint8)).save(data / "mnist" / "train" / "0" / "0.png")


def _unknown_file(coll: Path) -> None:
    _edit(coll, 1, lambda r: r.append({**r[0], "file_name": "train/2/nosuch.png"}))


def _unknown_class(coll: Path) -> None:
    _edit(coll, 0, lambda r: r.append({**r[0], "klass": "11", "file_name": "train/11/0.png", "label": 11}))


def _wrong_label(coll: Path) -> None:
    _edit(coll, 2, lambda r: r[0].update(label=r[0]["label"] + 1))


def _missing_task(coll: Path) -> None:
    _split_file(coll, 3).unlink()


def _not_json(coll: Path) -> None:
    _split_file(coll, 4, "test").write_text("[{")


# (case id, extra flags, how to break the data or split files, words the message must contain)
CASES = [
    ("misspelt flag", ["--n_epochs", "3"], None, "unrecognized arguments: --n_epochs"),
    ("wrong type", ["--lr", "fast"], None, "invalid float value: 'fast'"),
    ("wrong int", ["--rnd_seed", "one"], None, "invalid int value: 'one'"),
    ("unknown mode", ["--mode", "lwf"], None, "invalid choice: 'lwf'"),
    ("unknown memory", ["--mem_manage", "lru"], None, "invalid choice: 'lru'"),
    ("unknown transform", ["--transforms", "mixup"], None, "invalid choice: 'mixup'"),
    ("unknown split", ["--exp_name", "blurry200"], None, "unknown --exp_name 'blurry200'"),
    ("bad joint_acc", ["--joint_acc", "high"], None, "expected a number or 'auto'"),
    ("zero lr", ["--lr", "0"], None, "--lr must be > 0"),
    ("zero epochs", ["--n_epoch", "0"], None, "--n_epoch must be >= 1"),
    ("negative eval_period", ["--eval_period", "-5"], None, "--eval_period must be >= 0"),
    ("indivisible classes", ["--n_tasks", "3"], None, "cannot be divided"),
    ("memory above data", ["--memory_size", "1000"], None, "larger than the 40 training samples"),
    ("batch of one", ["--batchsize", "1"], None, "--batchsize must be >= 2"),
    ("head too large", ["--n_init_cls", "50"], None, "--n_init_cls 50 exceeds the 10 classes"),
    ("channels", ["--in_channels", "2"], None, "invalid choice: 2"),
    ("no gpu", ["--device", "cuda"], None, "no CUDA GPU is available"),
    ("joint auto without joint run", ["--joint_acc", "auto"], None, "no joint result"),
    ("missing dataset", ["--dataset", "cifar10"], None, "python -m utils.prepare"),
    ("no class folders", [], ("data", _no_classes), "has no class folders"),
    ("empty class", [], ("data", _empty_class), "train/5 holds no images"),
    ("truncated image", [], ("data", _truncate_png), "train/3/1.png"),
    ("not an image", [], ("data", _garbage_png), "train/7/2.png"),
    ("image of another size", [], ("data", _odd_size), "is 20x20"),
    ("split: unknown file", ["COLL"], ("coll", _unknown_file), "train/2/nosuch.png"),
    ("split: unknown class", ["COLL"], ("coll", _unknown_class), "do not match the dataset"),
    ("split: wrong label", ["COLL"], ("coll", _wrong_label), "klass -> label"),
    ("split: task missing", ["COLL"], ("coll", _missing_task), "task3.json: split file not found"),
    ("split: not JSON", ["COLL"], ("coll", _not_json), "not a readable JSON split file"),
]


@pytest.mark.parametrize("case,extra,breaker,words", CASES, ids=[c[0] for c in CASES])
def test_bad_input_exit_2_names_it_and_harms_nothing(tiny, tmp_path, capsys, case, extra, breaker, words):
    if case == "no gpu" and torch.cuda.is_available():
        pytest.skip("a CUDA GPU is present: --device cuda is valid here")
    data = tmp_path / "data"
    shutil.copytree(tiny / "data", data)
    coll = tmp_path / "coll"
    shutil.copytree(tiny / "collections", coll)
    if breaker:
        breaker[1](data if breaker[0] == "data" else coll)
    out = tmp_path / "out"
    earlier = {out / "results" / "mnist" / "earlier.json": '{"A_last": 1}', out / "logs" / "mnist" / "earlier.log": "x"}
    for p, text in earlier.items():
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(text)
    argv = ["--dataset", "mnist", "--data_dir", str(data), "--out_dir", str(out), "--device", "cpu", "--mode",
            "finetune", "--memory_size", "10", "--exp_name", "disjoint", "--no_cache", "--transforms"]
    argv += [a for a in extra if a != "COLL"]
    if "COLL" in extra:
        argv += ["--collections_dir", str(coll)]
    try:
        rc = rm_main.main(argv)
    except SystemExit as e:  # argparse refuses flags itself
        rc = e.code
    err = capsys.readouterr().err
    assert rc == 2, err
    assert words in err, err
    assert sorted(p.name for p in (out / "results").rglob("*") if p.is_file()) == ["earlier.json"]
    assert all(p.read_text() == text for p, text in earlier.items())
    assert not (out / "tensorboard").exists() and not (out / "checkpoints").exists()


def test_truncated_idx_file_is_refused_by_prepare(tmp_path, capsys):
    src = tmp_path / "src"
    src.mkdir()
    with gzip.open(src / "train-images-idx3-ubyte.gz", "wb") as f:
        f.write(b"\x00\x00\x08\x03\x00\x00\x00\x05\x00\x00\x00\x1c\x00\x00\x00\x1c" + b"\x00" * 100)
    assert prepare.main(["--dataset", "mnist", "--source", str(src), "--data_dir", str(tmp_path / "d")]) == 2
    assert "train-images-idx3-ubyte" in capsys.readouterr().err
    assert not (tmp_path / "d" / "mnist").exists()


def test_blurry_run_with_a_small_head_counts_unseen_classes_as_wrong(tiny, tmp_path):
    """blurry10 on 4 images per class: task 0's stream does not reach every class, so its head is
    smaller than the 10 classes of the blurry test set; those classes count as wrong (this used
    to crash the evaluation loss)."""
    out = tmp_path / "out"
    assert rm_main.main(["--dataset", "mnist", "--data_dir", str(tiny / "data"), "--out_dir", str(out), "--device",
                         "cpu", "--mode", "finetune", "--memory_size", "10", "--exp_name", "blurry10",
                         "--n_init_cls", "2", "--n_epoch", "1", "--no_cache", "--transforms"]) == 0
    (res,) = [json.loads(p.read_text()) for p in (out / "results" / "mnist").glob("*.json")]
    import re
    log = next((out / "logs" / "mnist").glob("*.log")).read_text()
    head = int(re.search(r"Task 0: .* head (\d+) outputs", log).group(1))
    assert head < 10
    assert all(res["cls_acc"][0][c] == 0.0 for c in range(head, 10))
    assert res["epochs"][0][-1]["test_loss"] is not None
