"""The policy for odd files in an image folder, kind by kind: converted (counted, named, logged) or refused
(exit 2, the file named); never dropped or converted silently."""
from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import main as rm_main
from utils.data.decode import DataError
from utils.data.folder import load_split

RNG = np.random.RandomState(0)


def grey(seed: int) -> np.ndarray:
    return np.random.RandomState(seed).randint(0, 256, (8, 8), dtype=np.uint8)


def make_folder(root: Path, colour: bool = False) -> Path:
    """A 2-class folder ``odd`` of 8x8 PNGs (6 train, 2 test per class), grey or RGB."""
    for split, n in (("train", 6), ("test", 2)):
        for c in range(2):
            d = root / "odd" / split / f"c{c}"
            d.mkdir(parents=True, exist_ok=True)
            for i in range(n):
                g = grey(100 * c + i + (50 if split == "test" else 0))
                Image.fromarray(np.stack([g, g // 2, 255 - g], -1) if colour else g).save(d / f"{i}.png")
    return root


def rgba(p: Path) -> np.ndarray:
    a = np.random.RandomState(1).randint(0, 256, (8, 8, 4), dtype=np.uint8)
    Image.fromarray(a, "RGBA").save(p)
    return np.asarray(Image.fromarray(a, "RGBA").convert("L"))  # PIL's luma ignores alpha


def palette(p: Path) -> np.ndarray:
    im = Image.fromarray(np.random.RandomState(2).randint(0, 256, (8, 8, 3), dtype=np.uint8)).convert("P")
    im.save(p)
    return np.asarray(im.convert("L"))


def sixteen(p: Path) -> np.ndarray:
    g = grey(3).astype(np.uint16) * 257  # 16-bit samples whose top byte is the 8-bit image
    Image.fromarray(g).save(p)
    return grey(3)


def animated(p: Path) -> np.ndarray:
    frames = [Image.fromarray(grey(4)), Image.fromarray(255 - grey(4))]
    frames[0].save(p.with_suffix(".gif"), save_all=True, append_images=frames[1:])
    return np.asarray(Image.open(p.with_suffix(".gif")).convert("L"))


# (case, writer of the odd file into a grey folder, kinds it must be counted under)
CONVERTED = [
    ("RGBA in a grey set", rgba, {"to_grey", "alpha"}),
    ("palette in a grey set", palette, {"to_grey", "palette"}),
    ("16-bit grey", sixteen, {"16bit"}),
    ("animated GIF", animated, {"to_grey", "palette", "frames"}),
]


@pytest.mark.parametrize("case,write,kinds", CONVERTED, ids=[c[0] for c in CONVERTED])
@pytest.mark.parametrize("budget", [None, 0], ids=["in memory", "streamed"])
def test_converted_files_are_counted_named_and_decoded_as_converted(tmp_path, case, write, kinds, budget):
    root = make_folder(tmp_path) / "odd"
    target = root / "train" / "c1" / "9.png"
    want = write(target)
    name = "train/c1/9.gif" if write is animated else "train/c1/9.png"
    s = load_split(root, "train", budget=budget, use_cache=False)
    assert set(s.conversions) == kinds
    assert all(n == 1 and ex == [name] for n, ex in s.conversions.values())
    assert "converted while decoding" in s.info and name in s.info
    i = s.files.index(name)
    assert np.array_equal(s.images[i:i + 1].cpu().numpy()[0, 0], want)
    assert s.images.shape[1] == 1  # the split stays grey


def test_grey_in_a_colour_set_and_conversions_survive_the_cache(tmp_path):
    root = make_folder(tmp_path, colour=True) / "odd"
    Image.fromarray(grey(5)).save(root / "train" / "c0" / "9.png")
    for _ in range(2):  # decoded, then read from the cache
        s = load_split(root, "train")
        assert s.conversions == {"to_colour": [1, ["train/c0/9.png"]]}
        i = s.files.index("train/c0/9.png")
        assert s.images.shape[1] == 3 and all(np.array_equal(s.images[i, ch].numpy(), grey(5)) for ch in range(3))
    assert (root / ".cache").is_dir()


def test_a_run_logs_the_conversions_and_the_hidden_files_it_left_out(tmp_path):
    data = make_folder(tmp_path)
    rgba(data / "odd" / "train" / "c0" / "7.png")
    (data / "odd" / "train" / "c1" / ".DS_Store").write_bytes(b"\0\1")
    argv = ["--dataset", "odd", "--data_dir", str(data), "--out_dir", str(tmp_path / "out"), "--device", "cpu",
            "--mode", "finetune", "--n_tasks", "2", "--n_cls_a_task", "1", "--n_init_cls", "2", "--memory_size", "4",
            "--n_epoch", "1", "--batchsize", "4", "--transforms", "--run_name", "r"]
    assert rm_main.main(argv) == 0
    log = (tmp_path / "out" / "logs" / "odd" / "r.log").read_text()
    assert "converted while decoding: 1 alpha channel dropped (e.g. train/c0/7.png); " \
           "1 colour converted to grey (ITU-R 601-2 luma) (e.g. train/c0/7.png)" in log
    assert "left out 1 hidden entry (train/c1/.DS_Store)" in log


def _dangling(root: Path) -> Path:
    p = root / "train" / "c0" / "link.png"
    os.symlink(root / "nowhere.png", p)
    return p


def _folder(root: Path) -> Path:
    p = root / "train" / "c0" / "sub.png"
    p.mkdir()
    return p


def _text(root: Path) -> Path:
    p = root / "train" / "c1" / "notes.txt"
    p.write_text("labels were checked by hand")
    return p


def _not_image(root: Path) -> Path:
    p = root / "train" / "c1" / "fake.png"
    p.write_text("this is text")
    return p


def _empty(root: Path) -> Path:
    p = root / "train" / "c1" / "empty.png"
    p.write_bytes(b"")
    return p


def _beside(root: Path) -> Path:
    p = root / "train" / "labels.csv"
    p.write_text("a,b")
    return p


REFUSED = [("dangling symlink", _dangling, "is a broken symbolic link"),
           ("folder where a file is expected", _folder, "is a folder where an image is expected"),
           ("file of another type", _text, "is not an image"),
           ("not an image inside", _not_image, "cannot read image"),
           ("zero-size file", _empty, "is empty"),
           ("file beside the class folders", _beside, "is not a class folder")]


@pytest.mark.parametrize("case,make,words", REFUSED, ids=[c[0] for c in REFUSED])
def test_refused_files_exit_2_named_with_nothing_written(tmp_path, capsys, case, make, words):
    data = make_folder(tmp_path)
    bad = make(data / "odd")
    out = tmp_path / "out"
    rc = rm_main.main(["--dataset", "odd", "--data_dir", str(data), "--out_dir", str(out), "--device", "cpu",
                       "--n_tasks", "2", "--n_cls_a_task", "1", "--memory_size", "4", "--n_epoch", "1",
                       "--batchsize", "4", "--transforms"])
    err = capsys.readouterr().err
    assert rc == 2, err
    assert words in err and str(bad) in err, err
    assert not (out / "results").exists() and not (out / "logs").exists()
    with pytest.raises(DataError):
        load_split(data / "odd", "train", use_cache=False)
    shutil.rmtree(data)
