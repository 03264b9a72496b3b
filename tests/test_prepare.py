"""Tests of utils.prepare: IDX parsing and checks, PNG folder layout, atomic writes and the CLI."""
from __future__ import annotations

import gzip
import json
import os
import subprocess
import sys
import types
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.paths import FASHION_SRC, MNIST_SRC
from utils.prepare import PrepareError, cli, idx
from utils.prepare import build as prep

REPO = Path(__file__).resolve().parents[1]
MNIST_IDX, FASHION_IDX = MNIST_SRC, FASHION_SRC
TINY_COUNTS = {"train": 12, "test": 6}


def idx_bytes(array: np.ndarray) -> bytes:
    """Encode a uint8 array as IDX (magic 0x0000 08 <ndim>, big-endian dims, data)."""
    header = bytes([0, 0, 8, array.ndim]) + b"".join(int(d).to_bytes(4, "big") for d in array.shape)
    return header + array.astype(np.uint8).tobytes()


def write_idx(path: Path, array: np.ndarray, gz: bool) -> Path:
    data = idx_bytes(array)
    if gz:
        path = path.with_name(path.name + ".gz")
        path.write_bytes(gzip.compress(data))
    else:
        path.write_bytes(data)
    return path


def tiny_arrays(seed: int = 0):
    """3 classes: 4 train and 2 test images each, classes interleaved so indices matter."""
    rng = np.random.RandomState(seed)
    out = {}
    for split, per in (("train", 4), ("test", 2)):
        labels = rng.permutation(np.repeat(np.arange(3, dtype=np.uint8), per))
        images = rng.randint(0, 256, size=(len(labels), 28, 28)).astype(np.uint8)
        images[0, 0, 0], images[0, 0, 1] = 0, 255
        out[split] = (images, labels)
    return out


@pytest.fixture
def tiny(tmp_path):
    """A folder with a tiny IDX set: train files gzip-compressed, test files plain."""
    src = tmp_path / "src"
    src.mkdir()
    arrays = tiny_arrays()
    for split, gz in (("train", True), ("test", False)):
        img_name, lbl_name = idx.IDX_FILES[split]
        write_idx(src / img_name, arrays[split][0], gz)
        write_idx(src / lbl_name, arrays[split][1], gz)
    return src, arrays


def pngs(root: Path) -> list[Path]:
    return sorted(root.rglob("*.png"))


def leftovers(data_dir: Path) -> list[str]:
    return sorted(p.name for p in data_dir.iterdir() if p.name.startswith("."))


# ---------------------------------------------------------------- IDX parsing

@pytest.mark.parametrize("gz", [True, False])
def test_read_idx_roundtrip(tmp_path, gz):
    images, labels = tiny_arrays()["train"]
    assert np.array_equal(idx.read_idx(write_idx(tmp_path / "img", images, gz)), images)
    got = idx.read_idx(write_idx(tmp_path / "lbl", labels, gz))
    assert got.dtype == np.uint8 and np.array_equal(got, labels)


def test_truncated_plain_names_file(tmp_path):
    path = write_idx(tmp_path / "train-images-idx3-ubyte", tiny_arrays()["train"][0], False)
    path.write_bytes(path.read_bytes()[:-10])
    with pytest.raises(PrepareError, match=r"train-images-idx3-ubyte: file is truncated.*download it again"):
        idx.read_idx(path)
    path.write_bytes(b"\x00\x00")
    with pytest.raises(PrepareError, match="train-images-idx3-ubyte: file is truncated"):
        idx.read_idx(path)


def test_truncated_gz_names_file(tmp_path):
    path = write_idx(tmp_path / "train-labels-idx1-ubyte", tiny_arrays()["train"][1], True)
    path.write_bytes(path.read_bytes()[:-12])
    with pytest.raises(PrepareError, match=r"train-labels-idx1-ubyte\.gz: cannot read"):
        idx.read_idx(path)


def test_extra_bytes_and_wrong_magic(tmp_path):
    path = tmp_path / "t10k-images-idx3-ubyte"
    good = idx_bytes(tiny_arrays()["test"][0])
    path.write_bytes(good + b"\x00")
    with pytest.raises(PrepareError, match="t10k-images-idx3-ubyte: file is longer than its header"):
        idx.read_idx(path)
    path.write_bytes(b"\x00\x00\x0d\x03" + good[4:])  # float IDX, not unsigned bytes
    with pytest.raises(PrepareError, match=r"t10k-images-idx3-ubyte: bad magic number 0x00000d03"):
        idx.read_idx(path)


def test_split_checks(tiny):
    src, arrays = tiny
    images, labels = idx.read_split(src, "train", 12)
    assert np.array_equal(images, arrays["train"][0]) and np.array_equal(labels, arrays["train"][1])
    with pytest.raises(PrepareError, match=r"train-images-idx3-ubyte\.gz: 12 samples, expected 60000"):
        idx.read_split(src, "train", 60000)
    write_idx(src / "t10k-labels-idx1-ubyte", np.array([0, 1, 2, 10, 1, 2], np.uint8), False)
    with pytest.raises(PrepareError, match=r"t10k-labels-idx1-ubyte: 1 labels outside 0\.\.9"):
        idx.read_split(src, "test")
    write_idx(src / "t10k-labels-idx1-ubyte", np.array([0, 1, 2], np.uint8), False)
    with pytest.raises(PrepareError, match="6 images but t10k-labels-idx1-ubyte has 3 labels"):
        idx.read_split(src, "test")
    write_idx(src / "t10k-images-idx3-ubyte", np.zeros((3, 32, 32), np.uint8), False)
    with pytest.raises(PrepareError, match=r"t10k-images-idx3-ubyte: expected images of shape"):
        idx.read_split(src, "test")
    (src / "t10k-images-idx3-ubyte").unlink()
    with pytest.raises(PrepareError, match=r"t10k-images-idx3-ubyte\[\.gz\]: file not found"):
        idx.read_split(src, "test")


# ---------------------------------------------------------------- preparing

def test_prepare_layout_and_pixels(tiny, tmp_path, capsys):
    src, arrays = tiny
    out = prep.prepare("mnist", src, tmp_path / "data", expected_counts=TINY_COUNTS)
    assert out == tmp_path / "data" / "mnist"
    assert "wrote 18 PNGs" in capsys.readouterr().out
    for split, (images, labels) in arrays.items():
        files = pngs(out / split)
        assert len(files) == len(labels)
        for i, (img, lab) in enumerate(zip(images, labels)):
            path = out / split / str(lab) / f"{i}.png"
            with Image.open(path) as im:
                assert im.mode == "L" and im.format == "PNG"
                assert np.array_equal(np.asarray(im), img)
    assert sorted(p.name for p in (out / "train").iterdir()) == ["0", "1", "2"]
    meta = json.loads((out / "prepared.json").read_text())
    assert meta["dataset"] == "mnist" and meta["per_class"] is None
    assert meta["counts"] == {"train": {"0": 4, "1": 4, "2": 4}, "test": {"0": 2, "1": 2, "2": 2}}
    assert json.loads((out / "classes.json").read_text())["3"] == "3 - three"
    assert leftovers(tmp_path / "data") == []


def test_default_count_check_rejects_tiny_set(tiny, tmp_path):
    src, _ = tiny
    with pytest.raises(PrepareError, match="12 samples, expected 60000"):
        prep.prepare("mnist", src, tmp_path / "data")
    assert list((tmp_path / "data").iterdir()) == []


def test_per_class_keeps_first_n_with_original_indices(tiny, tmp_path):
    src, arrays = tiny
    out = prep.prepare("fashion_mnist", src, tmp_path / "d", per_class=3, expected_counts=None,
                       workers=1)
    for split, (images, labels) in arrays.items():
        want = {f"{lab}/{i}.png" for c in range(3) for i in np.flatnonzero(labels == c)[:3]
                for lab in [c]}
        got = {f"{p.parent.name}/{p.name}" for p in pngs(out / split)}
        assert got == want
    assert len(pngs(out / "test")) == 6  # min(3, 2 available) per class
    names = json.loads((out / "classes.json").read_text())
    assert names["0"] == "T-shirt/top" and names["9"] == "Ankle boot"
    assert json.loads((out / "prepared.json").read_text())["per_class"] == 3


def test_already_prepared_is_noop_and_other_settings_refused(tiny, tmp_path, capsys):
    src, _ = tiny
    data = tmp_path / "data"
    out = prep.prepare("mnist", src, data, per_class=2, expected_counts=None)
    stamp = (out / "prepared.json").stat().st_mtime_ns
    capsys.readouterr()
    assert prep.prepare("mnist", src, data, per_class=2, expected_counts=None) == out
    assert "already prepared" in capsys.readouterr().out
    assert (out / "prepared.json").stat().st_mtime_ns == stamp
    with pytest.raises(PrepareError, match="not prepared with these settings.*--force"):
        prep.prepare("mnist", src, data, per_class=3, expected_counts=None)
    assert len(pngs(out)) == 12
    prep.prepare("mnist", src, data, per_class=3, expected_counts=None, force=True)
    assert len(pngs(out)) == 15 and leftovers(data) == []
    assert json.loads((out / "prepared.json").read_text())["per_class"] == 3


def test_partial_target_refused_then_forced(tiny, tmp_path):
    src, _ = tiny
    partial = tmp_path / "data" / "mnist" / "train" / "0"
    partial.mkdir(parents=True)
    (partial / "0.png").write_bytes(b"junk")
    with pytest.raises(PrepareError, match="exists but was not prepared"):
        prep.prepare("mnist", src, tmp_path / "data", expected_counts=None)
    out = prep.prepare("mnist", src, tmp_path / "data", expected_counts=None, force=True)
    assert len(pngs(out)) == 18 and (out / "prepared.json").is_file()


def test_failure_midway_leaves_nothing(tiny, tmp_path):
    src, _ = tiny
    (src / "t10k-labels-idx1-ubyte").write_bytes(b"\x00\x00\x08\x01\x00\x00\x00\x06\x01")  # truncated
    data = tmp_path / "data"
    with pytest.raises(PrepareError, match="t10k-labels-idx1-ubyte: file is truncated"):
        prep.prepare("mnist", src, data, expected_counts=None)  # train PNGs were written first
    assert list(data.iterdir()) == []


def test_failure_while_writing_keeps_old_target(tiny, tmp_path, monkeypatch):
    src, _ = tiny
    data = tmp_path / "data"
    prep.prepare("mnist", src, data, per_class=1, expected_counts=None)
    real = prep.write_image_folder

    def failing(images, labels, out_dir, split, indices, workers=2):
        real(images, labels, out_dir, split, indices, workers)
        if split == "test":
            raise RuntimeError("disk full")

    monkeypatch.setattr(prep, "write_image_folder", failing)
    with pytest.raises(RuntimeError, match="disk full"):
        prep.prepare("mnist", src, data, expected_counts=None, force=True)
    assert leftovers(data) == [] and [p.name for p in data.iterdir()] == ["mnist"]
    assert json.loads((data / "mnist" / "prepared.json").read_text())["per_class"] == 1
    assert len(pngs(data / "mnist")) == 6


def test_download_path_reads_torchvision_raw_files(tmp_path, monkeypatch):
    """The download branch, with a stand-in torchvision (no network here; importing it is slow)."""
    torchvision = types.ModuleType("torchvision")
    torchvision.datasets = types.ModuleType("torchvision.datasets")
    monkeypatch.setitem(sys.modules, "torchvision", torchvision)
    monkeypatch.setitem(sys.modules, "torchvision.datasets", torchvision.datasets)
    arrays = tiny_arrays(1)

    class FakeMNIST:
        def __init__(self, root, train=True, download=False):
            assert download
            self.raw_folder = os.path.join(root, "MNIST", "raw")
            os.makedirs(self.raw_folder, exist_ok=True)
            for split in ("train", "test"):
                for base, arr in zip(idx.IDX_FILES[split], arrays[split]):
                    write_idx(Path(self.raw_folder) / base, arr, False)

    torchvision.datasets.MNIST = FakeMNIST
    out = prep.prepare("mnist", None, tmp_path / "data", expected_counts=TINY_COUNTS)
    assert len(pngs(out)) == 18 and "MNIST/raw" in json.loads((out / "prepared.json").read_text())["source"]

    def offline(*args, **kwargs):
        raise OSError("network is unreachable")

    torchvision.datasets.FashionMNIST = offline
    with pytest.raises(PrepareError, match="could not download fashion_mnist.*--source"):
        prep.prepare("fashion_mnist", None, tmp_path / "data")


# ---------------------------------------------------------------- CLI

def test_cli_error_exit_code(tmp_path, capsys):
    code = cli.main(["--dataset", "mnist", "--source", str(tmp_path / "nowhere"),
                      "--data_dir", str(tmp_path / "d")])
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("error: ") and "nowhere" in err


def test_cli_subprocess(tiny, tmp_path):
    src, _ = tiny
    base = [sys.executable, "-m", "utils.prepare", "--dataset", "mnist", "--source", str(src),
            "--data_dir", str(tmp_path / "d")]
    bad = subprocess.run(base, cwd=REPO, capture_output=True, text=True)
    assert bad.returncode == 2 and "error: " in bad.stderr and "expected 60000" in bad.stderr
    good = subprocess.run(base + ["--no_count_check"], cwd=REPO, capture_output=True, text=True)
    assert good.returncode == 0, good.stderr
    assert len(pngs(tmp_path / "d" / "mnist")) == 18


# ---------------------------------------------------------------- real data

def test_find_source(tmp_path, monkeypatch):
    """The first known folder holding all four IDX files (plain or .gz), else None."""
    assert prep.find_source("cifar10") is None
    partial, full, later = tmp_path / "partial", tmp_path / "full", tmp_path / "later"
    for folder, names in ((partial, ["train-images-idx3-ubyte.gz"]),
                          (full, ["train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte",
                                  "t10k-labels-idx1-ubyte.gz"]),
                          (later, ["train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte",
                                   "t10k-labels-idx1-ubyte"])):
        folder.mkdir()
        for n in names:
            (folder / n).write_bytes(b"")
    monkeypatch.setitem(prep.KNOWN_SOURCES, "mnist", [tmp_path / "absent", partial, full, later])
    assert prep.find_source("mnist") == full
    monkeypatch.setitem(prep.KNOWN_SOURCES, "mnist", [partial])
    assert prep.find_source("mnist") is None
    # the defaults: ../shared beside the checkout, the Debian package
    default = prep.REPO_ROOT.parent / "shared" / "datasets" / "mnist"
    monkeypatch.undo()
    if (default / "train-images-idx3-ubyte.gz").is_file():
        assert prep.find_source("mnist") == default
    if (FASHION_IDX / "train-images-idx3-ubyte.gz").is_file() and FASHION_IDX == Path("/usr/share/datasets/fashion-mnist"):
        assert prep.find_source("fashion_mnist") == FASHION_IDX


@pytest.mark.parametrize("dataset,folder", [("mnist", MNIST_IDX), ("fashion_mnist", FASHION_IDX)])
def test_real_data_per_class(dataset, folder, tmp_path):
    if not (folder / "train-images-idx3-ubyte.gz").is_file():
        pytest.skip(f"{folder} not available")
    out = prep.prepare(dataset, folder, tmp_path / "data", per_class=5)
    for split in ("train", "test"):
        images, labels = idx.read_split(folder, split, prep.official_counts("mnist")[split])
        files = pngs(out / split)
        assert len(files) == 50
        for path in files:
            i = int(path.stem)
            assert labels[i] == int(path.parent.name)
            with Image.open(path) as im:
                assert np.array_equal(np.asarray(im), images[i])
        firsts = {int(p.stem) for p in files}
        assert firsts == {i for c in range(10) for i in np.flatnonzero(labels == c)[:5]}
