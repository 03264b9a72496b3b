"""Tests of utils.prepare for CIFAR-10/100: small sets in the original python-pickle format."""
from __future__ import annotations

import json
import os
import pickle
import re
import subprocess
import sys
import tarfile
import types
from pathlib import Path
from typing import NamedTuple

import numpy as np
import pytest
import torch
from PIL import Image

from utils.data.folder import load_split
from utils.prepare import PrepareError, cifar, cli, writer
from utils.prepare import build as prep

REPO = Path(__file__).resolve().parents[1]
CIFAR10_NAMES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship",
                 "truck"]
CIFAR100_NAMES = [
    "apple", "aquarium_fish", "baby", "bear", "beaver", "bed", "bee", "beetle", "bicycle", "bottle",
    "bowl", "boy", "bridge", "bus", "butterfly", "camel", "can", "castle", "caterpillar", "cattle",
    "chair", "chimpanzee", "clock", "cloud", "cockroach", "couch", "crab", "crocodile", "cup",
    "dinosaur", "dolphin", "elephant", "flatfish", "forest", "fox", "girl", "hamster", "house",
    "kangaroo", "keyboard", "lamp", "lawn_mower", "leopard", "lion", "lizard", "lobster", "man",
    "maple_tree", "motorcycle", "mountain", "mouse", "mushroom", "oak_tree", "orange", "orchid",
    "otter", "palm_tree", "pear", "pickup_truck", "pine_tree", "plain", "plate", "poppy",
    "porcupine", "possum", "rabbit", "raccoon", "ray", "road", "rocket", "rose", "sea", "seal",
    "shark", "shrew", "skunk", "skyscraper", "snail", "snake", "spider", "squirrel", "streetcar",
    "sunflower", "sweet_pepper", "table", "tank", "telephone", "television", "tiger", "tractor",
    "train", "trout", "tulip", "turtle", "wardrobe", "whale", "willow_tree", "wolf", "woman", "worm"]
# Labels in the standard order, classes interleaved (7, 37 coprime with 10, 100): CIFAR-10 has
# 3 train images per class spread over 5 batches of 6, and 2 test images; CIFAR-100 2 and 1.
LABELS = {
    "cifar10": {"train": [(7 * i) % 10 for i in range(30)], "test": [(3 * i + 1) % 10 for i in range(20)]},
    "cifar100": {"train": [(37 * i) % 100 for i in range(200)],
                 "test": [(11 * i + 5) % 100 for i in range(100)]},
}
NAMES = {"cifar10": CIFAR10_NAMES, "cifar100": CIFAR100_NAMES}
PER_CLASS = {"cifar10": {"train": 3, "test": 2}, "cifar100": {"train": 2, "test": 1}}


# ---------------------------------------------------------------- the original file format

class Global(NamedTuple):
    module: str
    name: str


class Reduce(NamedTuple):
    func: Global
    args: tuple
    state: object = None


def py2_pickle(obj: object) -> bytes:
    """Serialize like Python 2's cPickle, protocol 2, which wrote the CIFAR files: str keys and
    values are SHORT_BINSTRING/BINSTRING (bytes under encoding="bytes"), arrays are rebuilt by
    numpy.core.multiarray._reconstruct."""
    out = bytearray(b"\x80\x02")

    def put(o: object) -> None:
        if isinstance(o, np.ndarray):
            assert o.dtype == np.uint8
            dtype = Reduce(Global("numpy", "dtype"), (b"u1", 0, 1), (3, b"|", None, None, None, -1, -1, 0))
            put(Reduce(Global("numpy.core.multiarray", "_reconstruct"),
                       (Global("numpy", "ndarray"), (0,), b"b"),
                       (1, tuple(o.shape), dtype, False, o.tobytes())))
        elif isinstance(o, Reduce):
            put(o.func), put(tuple(o.args))
            out.extend(b"R")
            if o.state is not None:
                put(o.state)
                out.extend(b"b")
        elif isinstance(o, Global):
            out.extend(f"c{o.module}\n{o.name}\n".encode())
        elif isinstance(o, dict):
            out.extend(b"}(")
            for k, v in o.items():
                put(k), put(v)
            out.extend(b"u")
        elif isinstance(o, (list, tuple)):
            out.extend(b"](" if isinstance(o, list) else b"(")
            for v in o:
                put(v)
            out.extend(b"e" if isinstance(o, list) else b"t")
        elif o is None or isinstance(o, bool):
            out.extend({None: b"N", True: b"\x88", False: b"\x89"}[o])
        elif isinstance(o, int):
            if 0 <= o < 256:
                out.extend(b"K" + bytes([o]))
            else:
                out.extend(b"J" + o.to_bytes(4, "little", signed=True))
        elif isinstance(o, bytes):
            out.extend((b"U" + bytes([len(o)])) if len(o) < 256 else (b"T" + len(o).to_bytes(4, "little")))
            out.extend(o)
        else:
            raise TypeError(type(o))

    put(obj)
    return bytes(out + b".")


def hand_row(r: int, g: int, b: int) -> np.ndarray:
    """One row of b"data", written by hand: planes R, G, B of 1024 bytes, each 32 rows of 32; the R
    plane is r except 11 at (y0, x1), G is g except 22 at (y1, x0), B is b except 33 at (y31, x30)."""
    row = np.empty(3072, np.uint8)
    row[0:1024], row[1024:2048], row[2048:3072] = r, g, b
    row[0 * 32 + 1] = 11
    row[1024 + 1 * 32 + 0] = 22
    row[2048 + 31 * 32 + 30] = 33
    return row


def hand_image(r: int, g: int, b: int) -> np.ndarray:
    """What hand_row(r, g, b) must read back as: uint8 [32, 32, 3]."""
    img = np.empty((32, 32, 3), np.uint8)
    img[:, :] = (r, g, b)
    img[0, 1, 0], img[1, 0, 1], img[31, 30, 2] = 11, 22, 33
    return img


def colour(split: str, i: int, label: int) -> tuple[int, int, int]:
    """The (r, g, b) of image i: distinct per image and split."""
    return (i % 256, 2 * label, 250 if split == "train" else 150)


def rows(split: str, labels: list[int]) -> np.ndarray:
    return np.stack([hand_row(*colour(split, i, lab)) for i, lab in enumerate(labels)])


def write_cifar(folder: Path, dataset: str) -> Path:
    """Write the pickles of `dataset` (names as in the official archive) into `folder`."""
    folder.mkdir(parents=True)
    labels = LABELS[dataset]
    if dataset == "cifar10":
        data = rows("train", labels["train"])
        for b in range(5):
            part = slice(6 * b, 6 * b + 6)
            (folder / f"data_batch_{b + 1}").write_bytes(py2_pickle({
                b"batch_label": f"training batch {b + 1} of 5".encode(), b"labels": labels["train"][part],
                b"data": data[part], b"filenames": [f"img_{i}.png".encode() for i in range(6)]}))
        (folder / "test_batch").write_bytes(py2_pickle({
            b"batch_label": b"testing batch 1 of 1", b"labels": labels["test"],
            b"data": rows("test", labels["test"]), b"filenames": [b"t.png"] * 20}))
        (folder / "batches.meta").write_bytes(py2_pickle({
            b"num_cases_per_batch": 10000, b"label_names": [n.encode() for n in CIFAR10_NAMES],
            b"num_vis": 3072}))
    else:
        for split in ("train", "test"):
            (folder / split).write_bytes(py2_pickle({
                b"filenames": [b"x.png"] * len(labels[split]), b"batch_label": split.encode(),
                b"fine_labels": labels[split], b"coarse_labels": [c // 5 for c in labels[split]],
                b"data": rows(split, labels[split])}))
        (folder / "meta").write_bytes(py2_pickle({
            b"fine_label_names": [n.encode() for n in CIFAR100_NAMES],
            b"coarse_label_names": [f"super{i}".encode() for i in range(20)]}))
    (folder / ("readme.html" if dataset == "cifar10" else "file.txt~")).write_text("extra file\n")
    return folder


def make_source(tmp: Path, dataset: str, form: str) -> Path:
    """The --source for `form`: archive, folder (extracted), parent_archive or parent_folder."""
    spec = cifar.SPECS[dataset]
    extracted = write_cifar(tmp / "build" / spec.folder, dataset)
    if form in ("folder", "parent_folder"):
        return extracted if form == "folder" else extracted.parent
    (tmp / "dl").mkdir()
    with tarfile.open(tmp / "dl" / spec.archive, "w:gz") as tar:
        tar.add(extracted, arcname=spec.folder)
    return tmp / "dl" / spec.archive if form == "archive" else tmp / "dl"


def test_py2_pickle_is_what_pickle_load_reads():
    """The writer above is the format pickle.load(f, encoding="bytes") reads, keys and arrays alike."""
    obj = {b"labels": [3, 300, 70000], b"data": hand_row(1, 2, 3)[None], b"label_names": [b"cat"],
           b"num_vis": 3072, b"x": (None, True, False, b"y" * 300)}
    back = pickle.loads(py2_pickle(obj), encoding="bytes")
    assert back.keys() == obj.keys() and back[b"labels"] == obj[b"labels"]
    assert back[b"data"].dtype == np.uint8 and np.array_equal(back[b"data"], obj[b"data"])
    assert back[b"x"] == obj[b"x"] and back[b"label_names"] == [b"cat"]
    assert cifar.unpickle("f", py2_pickle(obj)).keys() == obj.keys()


def pngs(root: Path) -> list[Path]:
    return sorted(root.rglob("*.png"))


def standard_index(labels, names: list[str], rel: str) -> int:
    """The standard-order index of "<split>/<class>/<k>.png": the k-th sample (1-based) of that class."""
    folder, stem = rel.split("/")[-2:]
    return int(np.flatnonzero(np.asarray(labels) == names.index(folder))[int(stem[:-4]) - 1])


def test_class_counter_names():
    """cifar2png's names, as in the paper's split files (e.g. test/truck/0001.png ... 1000.png)."""
    assert writer.class_counter_stems(np.array([3, 1, 3, 3, 1, 0])) == ["0001", "0001", "0002", "0003", "0002", "0001"]
    assert writer.class_counter_stems(np.zeros(1000, dtype=np.int64))[-1] == "1000"
    assert writer.class_counter_stems(np.array([], dtype=np.int64)) == []


def check_prepared(out: Path, dataset: str, per_class: int | None = None) -> None:
    """Every PNG: folder = class name, name = the class counter, exact pixels; counts as expected."""
    names = NAMES[dataset]
    for split in ("train", "test"):
        labels = np.array(LABELS[dataset][split])
        n_per = {c: min(int((labels == c).sum()), per_class or 10**9) for c in range(len(names))}
        want = {f"{names[c]}/{k:04d}.png" for c, n in n_per.items() for k in range(1, n + 1)}
        files = pngs(out / split)
        assert {p.relative_to(out / split).as_posix() for p in files} == want and len(files) == len(want)
        assert sorted(p.name for p in (out / split).iterdir()) == sorted(names)
        for path in files:
            i = standard_index(labels, names, path.as_posix())
            assert path.parent.name == names[labels[i]]
            with Image.open(path) as im:
                assert im.format == "PNG" and im.mode == "RGB" and im.size == (32, 32)
                arr = np.asarray(im)
            assert arr.shape == (32, 32, 3)
            assert np.array_equal(arr, hand_image(*colour(split, i, labels[i]))), path
        n = min(PER_CLASS[dataset][split], per_class or 99)
        assert {p.parent.name for p in files} == set(names)
        assert all(len(list((out / split / c).iterdir())) == n for c in names)
    meta = json.loads((out / "prepared.json").read_text())
    assert meta["dataset"] == dataset and meta["per_class"] == per_class
    assert meta["counts"]["test"] == {c: min(PER_CLASS[dataset]["test"], per_class or 99) for c in names}
    assert json.loads((out / "classes.json").read_text()) == {str(i): n for i, n in enumerate(names)}


# ---------------------------------------------------------------- preparing

@pytest.mark.parametrize("dataset", ["cifar10", "cifar100"])
@pytest.mark.parametrize("form", ["archive", "folder", "parent_archive", "parent_folder"])
def test_prepare_layout_and_pixels(tmp_path, dataset, form, capsys):
    src = make_source(tmp_path, dataset, form)
    out = prep.prepare(dataset, src, tmp_path / "data", expected_counts=None, workers=1)
    assert out == tmp_path / "data" / dataset
    n = len(LABELS[dataset]["train"]) + len(LABELS[dataset]["test"])
    assert f"wrote {n} PNGs" in capsys.readouterr().out
    check_prepared(out, dataset)
    assert [p.name for p in (tmp_path / "data").iterdir()] == [dataset]  # no temporary left


def test_hand_chosen_pixels(tmp_path):
    """A few images spelt out: plane order R, G, B and row-major layout."""
    out = prep.prepare("cifar10", make_source(tmp_path, "cifar10", "archive"), tmp_path / "d",
                       expected_counts=None, workers=1)

    def px(rel: str) -> np.ndarray:
        with Image.open(out / rel) as im:
            return np.asarray(im)

    a = px("train/airplane/0001.png")  # first image of data_batch_1, label 0, colour (0, 0, 250)
    assert a[0, 0].tolist() == [0, 0, 250] and a[0, 1].tolist() == [11, 0, 250]
    assert a[1, 0].tolist() == [0, 22, 250] and a[31, 30].tolist() == [0, 0, 33]
    assert a[30, 31].tolist() == [0, 0, 250] and a[31, 31].tolist() == [0, 0, 250]
    # index 27 (data_batch_5, row 3): label 7*27 % 10 = 9, the third truck (after 7 and 17)
    b = px("train/truck/0003.png")  # colour (27, 18, 250)
    assert b[5, 7].tolist() == [27, 18, 250] and b[0, 1].tolist() == [11, 18, 250]
    assert b[1, 0].tolist() == [27, 22, 250] and b[31, 30].tolist() == [27, 18, 33]
    c = px("test/automobile/0001.png")  # test_batch, first row: label 1, colour (0, 2, 150)
    assert c[16, 16].tolist() == [0, 2, 150] and c[1, 0].tolist() == [0, 22, 150]
    out100 = prep.prepare("cifar100", make_source(tmp_path / "c", "cifar100", "folder"),
                          tmp_path / "d", expected_counts=None, workers=1)
    with Image.open(out100 / "train" / "worm" / "0002.png") as im:  # index 127: 37*127 % 100 = 99, after 27
        d = np.asarray(im)
    assert d[2, 3].tolist() == [127, 198, 250] and d[31, 30].tolist() == [127, 198, 33]


@pytest.mark.parametrize("dataset", ["cifar10", "cifar100"])
def test_per_class_keeps_first_n_with_standard_indices(tmp_path, dataset):
    out = prep.prepare(dataset, make_source(tmp_path, dataset, "archive"), tmp_path / "d",
                       per_class=2 if dataset == "cifar10" else 1, expected_counts=None, workers=1)
    check_prepared(out, dataset, per_class=2 if dataset == "cifar10" else 1)
    if dataset == "cifar10":  # the first two of each class: indices 0..19 (data_batch_1..4)
        labels = LABELS[dataset]["train"]
        got = {standard_index(labels, NAMES[dataset], p.as_posix()) for p in pngs(out / "train")}
        assert got == set(range(20))
        assert sorted(p.name for p in (out / "train" / "ship").iterdir()) == ["0001.png", "0002.png"]


def test_load_split_reads_prepared_folder(tmp_path):
    """main.py's loader: uint8 [N,3,32,32], classes = sorted class names, labels by folder."""
    for dataset in ("cifar10", "cifar100"):
        out = prep.prepare(dataset, make_source(tmp_path / dataset, dataset, "archive"),
                           tmp_path / "data", expected_counts=None, workers=1)
        names = NAMES[dataset]
        assert names == sorted(names)  # so folder order = the official label ids
        for split in ("train", "test"):
            s = load_split(out, split)
            labels = LABELS[dataset][split]
            assert s.images.dtype == torch.uint8
            assert tuple(s.images.shape) == (len(labels), 3, 32, 32)
            assert s.classes == names
            for f, x, y in zip(s.files, s.images, s.folder_label.tolist()):
                i = standard_index(labels, names, f)
                assert y == labels[i] and f.startswith(f"{split}/{names[y]}/")
                want = hand_image(*colour(split, i, labels[i])).transpose(2, 0, 1)
                assert np.array_equal(x.numpy(), want), f


def test_official_counts_required_by_default(tmp_path):
    src = make_source(tmp_path, "cifar10", "folder")
    with pytest.raises(PrepareError, match=r"cifar-10-batches-py: 30 train samples .*expected 50000"):
        prep.prepare("cifar10", src, tmp_path / "d")
    assert list((tmp_path / "d").iterdir()) == []
    custom = {"train": 30, "test": 20}
    assert len(pngs(prep.prepare("cifar10", src, tmp_path / "d", expected_counts=custom))) == 50


def test_download_path_reads_torchvision_files(tmp_path, monkeypatch):
    """The download branch, with a stand-in torchvision (no network here)."""
    torchvision = types.ModuleType("torchvision")
    torchvision.datasets = types.ModuleType("torchvision.datasets")
    monkeypatch.setitem(sys.modules, "torchvision", torchvision)
    monkeypatch.setitem(sys.modules, "torchvision.datasets", torchvision.datasets)

    class FakeCIFAR10:
        base_folder = "cifar-10-batches-py"

        def __init__(self, root, train=True, download=False):
            assert download and train
            self.root = root
            write_cifar(Path(root) / self.base_folder, "cifar10")
            (Path(root) / "cifar-10-python.tar.gz").write_bytes(b"the archive")

    def offline(*args, **kwargs):
        raise OSError("network is unreachable")

    torchvision.datasets.CIFAR10, torchvision.datasets.CIFAR100 = FakeCIFAR10, offline
    out = prep.prepare("cifar10", None, tmp_path / "data", expected_counts=None, workers=1)
    check_prepared(out, "cifar10")
    assert json.loads((out / "prepared.json").read_text())["source"].endswith("cifar-10-batches-py")
    with pytest.raises(PrepareError,
                       match=r"could not download cifar100.*cifar-100-python\.tar\.gz.*--source"):
        prep.prepare("cifar100", None, tmp_path / "data")


# ---------------------------------------------------------------- bad files

def run_main(capsys, dataset: str, src: Path, data: Path) -> tuple[int, str]:
    code = cli.main(["--dataset", dataset, "--source", str(src), "--data_dir", str(data),
                      "--no_count_check", "--workers", "1"])
    return code, capsys.readouterr().err


def truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[:len(path.read_bytes()) // 2])


@pytest.mark.parametrize("damage,file,message", [
    ("truncated", "data_batch_3", r"not a valid CIFAR pickle .*download it again"),
    ("not_pickle", "test_batch", r"not a valid CIFAR pickle .*download it again"),
    ("empty", "data_batch_1", r"not a valid CIFAR pickle .*download it again"),
    ("missing_key", "batches.meta", r"no b'label_names' entry .*download it again"),
    ("missing_labels", "data_batch_5", r"no b'labels' entry .*download it again"),
    ("wrong_shape", "test_batch", r"b'data' should be a uint8 array \[N, 3072\], found uint8 \[20, 1024\]"),
    ("bad_label", "data_batch_2", r"1 labels outside 0\.\.9 .*download the file again"),
    ("no_dict", "batches.meta", r"holds a list, not the dict of a CIFAR file"),
    ("missing", "data_batch_4", r"file not found.*cifar-10-python\.tar\.gz"),
])
def test_bad_cifar10_file_exit_2_names_it(tmp_path, capsys, damage, file, message):
    src = make_source(tmp_path, "cifar10", "parent_folder")
    path = src / "cifar-10-batches-py" / file
    if damage == "truncated":
        truncate(path)
    elif damage == "not_pickle":
        path.write_bytes(b"<html><body>404 Not Found</body></html>\n")
    elif damage == "empty":
        path.write_bytes(b"")
    elif damage == "missing_key":
        path.write_bytes(py2_pickle({b"num_vis": 3072}))
    elif damage == "missing_labels":
        path.write_bytes(py2_pickle({b"data": rows("train", [1] * 6)}))
    elif damage == "wrong_shape":
        path.write_bytes(py2_pickle({b"labels": [0] * 20, b"data": np.zeros((20, 1024), np.uint8)}))
    elif damage == "bad_label":
        path.write_bytes(py2_pickle({b"labels": [0, 1, 10, 2, 3, 4], b"data": rows("train", [0] * 6)}))
    elif damage == "no_dict":
        path.write_bytes(py2_pickle([b"airplane"]))
    else:
        path.unlink()
    data = tmp_path / "data"
    code, err = run_main(capsys, "cifar10", src, data)
    assert code == 2 and err.startswith("error: ")
    assert f"{path}: " in err and len(err.strip().splitlines()) == 1
    assert re.search(message, err), err
    assert list(data.iterdir()) == []


def test_truncated_archive_and_member(tmp_path, capsys):
    src = make_source(tmp_path, "cifar100", "archive")
    truncate(src)
    code, err = run_main(capsys, "cifar100", src, tmp_path / "data")
    assert code == 2 and f"{src}: cannot read the archive" in err and "download it again" in err
    assert list((tmp_path / "data").iterdir()) == []
    # a well-formed archive whose train pickle was cut short
    folder = write_cifar(tmp_path / "x" / "cifar-100-python", "cifar100")
    truncate(folder / "train")
    archive = tmp_path / "x" / "cifar-100-python.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(folder, arcname="cifar-100-python")
    code, err = run_main(capsys, "cifar100", tmp_path / "x" / "cifar-100-python.tar.gz", tmp_path / "data")
    assert code == 2 and f"cifar-100-python/train (in {archive}): not a valid CIFAR pickle" in err
    assert "download it again" in err and list((tmp_path / "data").iterdir()) == []


def test_foreign_pickle_is_never_run(tmp_path, capsys):
    """A pickle that would call os.system is refused at its first global."""
    src = make_source(tmp_path, "cifar10", "folder")
    marker = tmp_path / "ran"
    (src / "data_batch_1").write_bytes(py2_pickle(Reduce(Global("os", "system"),
                                                         (f"touch {marker}".encode(),))))
    code, err = run_main(capsys, "cifar10", src, tmp_path / "data")
    assert code == 2 and "data_batch_1: not a valid CIFAR pickle" in err and "os.system" in err
    assert not marker.exists() and list((tmp_path / "data").iterdir()) == []


def test_wrong_source_messages(tmp_path, capsys):
    c100 = make_source(tmp_path / "a", "cifar100", "archive")
    code, err = run_main(capsys, "cifar10", c100, tmp_path / "data")
    assert code == 2 and "no member cifar-10-batches-py/data_batch_1" in err
    assert "use --dataset cifar100" in err
    code, err = run_main(capsys, "cifar10", c100.parent, tmp_path / "data")
    assert code == 2 and "no cifar10 files found" in err and "use --dataset cifar100" in err
    code, err = run_main(capsys, "cifar10", tmp_path / "nowhere", tmp_path / "data")
    assert code == 2 and "nowhere: not found" in err
    junk = tmp_path / "cifar-10-python.tar.gz"
    junk.write_bytes(b"<html>rate limited</html>")
    code, err = run_main(capsys, "cifar10", junk, tmp_path / "data")
    assert code == 2 and f"{junk}: cannot read the archive" in err
    assert list((tmp_path / "data").iterdir()) == []


def test_failed_force_keeps_old_target(tmp_path, capsys):
    src = make_source(tmp_path, "cifar10", "folder")
    data = tmp_path / "data"
    prep.prepare("cifar10", src, data, per_class=1, expected_counts=None, workers=1)
    truncate(src / "test_batch")
    code, err = run_main(capsys, "cifar10", src, data)
    assert code == 2 and "not prepared with these settings" in err
    code = cli.main(["--dataset", "cifar10", "--source", str(src), "--data_dir", str(data),
                      "--no_count_check", "--force"])
    assert code == 2 and "test_batch: not a valid CIFAR pickle" in capsys.readouterr().err
    assert [p.name for p in data.iterdir()] == ["cifar10"]
    assert len(pngs(data / "cifar10")) == 20


def test_cli_subprocess(tmp_path):
    src = make_source(tmp_path, "cifar10", "archive")
    base = [sys.executable, "-m", "utils.prepare", "--dataset", "cifar10", "--source", str(src),
            "--data_dir", str(tmp_path / "d"), "--workers", "1"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    bad = subprocess.run(base, cwd=REPO, capture_output=True, text=True, env=env)
    assert bad.returncode == 2 and "expected 50000" in bad.stderr
    good = subprocess.run(base + ["--no_count_check"], cwd=REPO, capture_output=True, text=True, env=env)
    assert good.returncode == 0, good.stderr
    check_prepared(tmp_path / "d" / "cifar10", "cifar10")


def test_folder_with_older_file_names_needs_force(tmp_path):
    """A CIFAR folder written before the class-counter names (no "file_names" in prepared.json) is
    not silently reused: the paper's split files would not find its images."""
    src = make_source(tmp_path, "cifar10", "archive")
    out = prep.prepare("cifar10", src, tmp_path / "d", expected_counts=None, workers=1)
    meta_path = out / "prepared.json"
    meta = json.loads(meta_path.read_text())
    assert meta["file_names"] == "class_counter"
    del meta["file_names"]
    meta_path.write_text(json.dumps(meta))
    with pytest.raises(PrepareError, match="older file names.*--force"):
        prep.prepare("cifar10", src, tmp_path / "d", expected_counts=None, workers=1)
    prep.prepare("cifar10", src, tmp_path / "d", expected_counts=None, workers=1, force=True)
    assert json.loads(meta_path.read_text())["file_names"] == "class_counter"
    check_prepared(out, "cifar10")
