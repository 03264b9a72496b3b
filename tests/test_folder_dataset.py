"""Any image folder is a dataset: classes, channels, input size and mean/std derived from the
training images and cached; --input_size resizes images of any size; a run on such a folder."""
from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import main as rm_main
from utils.data import folder as D


def save(path: Path, arr: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr).save(path)


def make_folder(root: Path, n_cls: int = 4, n_train: int = 6, n_test: int = 3, side: int = 16, seed: int = 0) -> Path:
    """``root/<split>/c<k>/<i>.png|jpg``: RGB, class-dependent brightness, PNG and JPEG mixed."""
    rng = np.random.RandomState(seed)
    for split, n in (("train", n_train), ("test", n_test)):
        for c in range(n_cls):
            for i in range(n):
                a = (rng.rand(side, side, 3) * 60 + c * 50).astype(np.uint8)
                save(root / split / f"c{c}" / f"{i}.{'png' if i % 2 else 'jpg'}", a)
    return root


def test_two_image_folder_derives_everything_by_hand(tmp_path):
    root = tmp_path / "two"
    a = np.array([[0, 10], [20, 30]], dtype=np.uint8)
    b = np.array([[255, 0], [100, 50]], dtype=np.uint8)
    save(root / "train" / "zebra" / "1.png", b)
    save(root / "train" / "ant" / "x.png", a)
    s = D.load_split(root, "train", derive_stats=True)
    assert s.classes == ["ant", "zebra"] and s.files == ["train/ant/x.png", "train/zebra/1.png"]
    assert s.folder_label.tolist() == [0, 1]
    assert s.images.dtype == torch.uint8 and tuple(s.images.shape) == (2, 1, 2, 2)
    assert np.array_equal(s.images[0, 0].numpy(), a) and np.array_equal(s.images[1, 0].numpy(), b)
    px = np.concatenate([a.ravel(), b.ravel()]).astype(np.float64) / 255  # 8 pixels, one channel
    assert s.mean == pytest.approx((px.mean(),), abs=1e-12)
    assert s.std == pytest.approx((px.std(ddof=1),), abs=1e-12)
    meta = json.loads((root / ".cache" / "train-v3-native.meta.json").read_text())
    assert meta["shape"] == [1, 2, 2] and meta["mean"] == list(s.mean) and meta["std"] == list(s.std)


def test_rgb_jpeg_png_and_grey_channels(tmp_path):
    root = make_folder(tmp_path / "rgb", n_cls=2, n_train=3)
    s = D.load_split(root, "train", derive_stats=True, use_cache=False)
    assert s.classes == ["c0", "c1"] and tuple(s.images.shape) == (6, 3, 16, 16)
    x = s.images.double() / 255
    assert s.mean == pytest.approx(tuple(x.mean((0, 2, 3)).tolist()), abs=1e-12)
    assert s.std == pytest.approx(tuple(x.std((0, 2, 3)).tolist()), abs=1e-12)
    # a grey first image makes the split grey; an RGB image in it gets PIL's luma
    grey = tmp_path / "grey"
    g = np.arange(64, dtype=np.uint8).reshape(8, 8)
    rgb = np.random.RandomState(1).randint(0, 256, (8, 8, 3), dtype=np.uint8)
    save(grey / "train" / "a" / "0.png", g)
    save(grey / "train" / "a" / "1.png", rgb)
    s = D.load_split(grey, "train", use_cache=False)
    assert tuple(s.images.shape) == (2, 1, 8, 8)
    assert np.array_equal(s.images[0, 0].numpy(), g)
    assert np.array_equal(s.images[1, 0].numpy(), np.asarray(Image.fromarray(rgb).convert("L")))
    # an RGB first image: grey images are repeated over 3 channels
    save(grey / "train" / "0" / "0.png", rgb)
    s = D.load_split(grey, "train", use_cache=False)
    assert tuple(s.images.shape) == (3, 3, 8, 8)
    assert all(np.array_equal(s.images[1, c].numpy(), g) for c in range(3))


def test_stats_cache_reused_and_invalidated_when_a_file_changes(tmp_path, monkeypatch):
    root = make_folder(tmp_path / "set", n_cls=2, n_train=3)
    first = D.load_split(root, "train", derive_stats=True)
    meta_path = root / ".cache" / "train-v3-native.meta.json"
    assert meta_path.is_file() and (root / ".cache" / "train-v3-native.pt").is_file()

    def boom(*a, **k):
        raise AssertionError("recomputed although cached")
    with monkeypatch.context() as m:
        m.setattr(D, "decode_split", boom)
        m.setattr(D, "pixel_sums", boom)
        again = D.load_split(root, "train", derive_stats=True)
    assert again.mean == first.mean and again.std == first.std
    assert torch.equal(again.images, first.images)
    # a changed image: new fingerprint, both caches rebuilt, new statistics
    f = root / "train" / "c0" / "1.png"
    save(f, np.full((16, 16, 3), 255, dtype=np.uint8))
    os.utime(f, ns=(1, 1))  # a different mtime even on coarse clocks
    changed = D.load_split(root, "train", derive_stats=True)
    assert changed.mean != first.mean and all(m > f for m, f in zip(changed.mean, first.mean))
    assert json.loads(meta_path.read_text())["mean"] == list(changed.mean)
    assert changed.images[1].eq(255).all()


@pytest.mark.filterwarnings("ignore:The image decoding:DeprecationWarning")
def test_input_size_resizes_images_of_any_size(tmp_path):
    root = tmp_path / "sizes"
    rng = np.random.RandomState(2)
    arrays = {"train/a/0.png": rng.randint(0, 256, (20, 20, 3), dtype=np.uint8),
              "train/a/1.png": rng.randint(0, 256, (24, 16, 3), dtype=np.uint8),  # 16 wide, 24 high
              "train/b/0.jpg": rng.randint(0, 256, (12, 12, 3), dtype=np.uint8),
              "train/b/1.png": rng.randint(0, 256, (9, 9), dtype=np.uint8)}
    for name, a in arrays.items():
        save(root / name, a)
    with pytest.raises(D.DataError, match=r"different sizes.*--input_size"):
        D.load_split(root, "train", use_cache=False)
    s = D.load_split(root, "train", size=16, derive_stats=True)
    assert tuple(s.images.shape) == (4, 3, 16, 16)
    assert (root / ".cache" / "train-v3-16.pt").is_file() and (root / ".cache" / "train-v3-16.meta.json").is_file()
    from torchvision.io import ImageReadMode, decode_image
    from torchvision.transforms.v2 import InterpolationMode
    from torchvision.transforms.v2 import functional as TF
    for i, name in enumerate(s.files):
        x = decode_image(str(root / name), mode=ImageReadMode.RGB)
        want = x if tuple(x.shape[1:]) == (16, 16) else TF.resize(
            x, [16, 16], interpolation=InterpolationMode.BILINEAR, antialias=True)
        assert torch.equal(s.images[i], want), name
    x = s.images.double() / 255
    assert s.mean == pytest.approx(tuple(x.mean((0, 2, 3)).tolist()), abs=1e-12)


def base_args(data_dir: Path, out: Path) -> list[str]:
    return ["--dataset", "myset", "--data_dir", str(data_dir), "--out_dir", str(out), "--mode", "finetune",
            "--n_tasks", "2", "--n_cls_a_task", "2", "--n_init_cls", "4", "--memory_size", "4", "--n_epoch", "1",
            "--device", "cpu", "--transforms", "--model_name", "mlp400"]


def test_two_task_run_on_a_four_class_folder(tmp_path):
    data = tmp_path / "data"
    make_folder(data / "myset")
    out = tmp_path / "out"
    assert rm_main.main(base_args(data, out)) == 0
    (res_file,) = (out / "results" / "myset").glob("*.json")
    res = json.loads(res_file.read_text())
    assert len(res["task_acc"]) == 2 and len(res["cls_acc"][0]) == 4
    (log,) = (out / "logs" / "myset").glob("*.log")
    line = next(x for x in log.read_text().splitlines() if "Data: " in x)
    assert "train: 24 images 3x16x16" in line and "in memory" in line
    assert "derived from the training images" in line and "3 channel(s), input size 16" in line
    meta = json.loads((data / "myset" / ".cache" / "train-v3-native.meta.json").read_text())
    assert f"mean ({meta['mean'][0]:.4f}" in line


def test_run_resizes_with_input_size_and_refuses_mixed_sizes_without_it(tmp_path, capsys):
    data = tmp_path / "data"
    root = make_folder(data / "myset", n_train=4, n_test=2)
    save(root / "train" / "c1" / "9.png", np.zeros((20, 24, 3), dtype=np.uint8))
    assert rm_main.main(base_args(data, tmp_path / "o1")) == 2
    err = capsys.readouterr().err
    assert "9.png is 24x20" in err and "--input_size" in err
    assert rm_main.main(base_args(data, tmp_path / "o2") + ["--input_size", "12"]) == 0
    (log,) = (tmp_path / "o2" / "logs" / "myset").glob("*.log")
    assert "resized to 12x12" in log.read_text() and "3x12x12" in log.read_text()
    assert rm_main.main(base_args(data, tmp_path / "o3") + ["--input_size", "0"]) == 2
    assert "--input_size must be >= 1" in capsys.readouterr().err


def test_imagenet_layout_with_val_split_resnet34_and_top5(tmp_path):
    """``--dataset imagenet``: train/ and val/ (no test/), JPEGs of another size resized to
    --input_size, the ImageNet preset's resnet34, top-5 accuracy."""
    rng = np.random.RandomState(1)
    root = tmp_path / "data" / "imagenet"
    for split, n in (("train", 4), ("val", 2)):
        for c in range(6):
            for i in range(n):
                a = (rng.rand(40, 48, 3) * 60 + c * 30).astype(np.uint8)
                Image.fromarray(a).save(_mk(root / split / f"n0{c}") / f"{i}.JPEG", format="JPEG")
    out = tmp_path / "out"
    args = ["--dataset", "imagenet", "--data_dir", str(tmp_path / "data"), "--out_dir", str(out), "--mode", "finetune",
            "--n_tasks", "2", "--n_cls_a_task", "3", "--n_init_cls", "3", "--memory_size", "6", "--n_epoch", "1",
            "--batchsize", "4", "--device", "cpu", "--transforms", "--input_size", "32", "--topk", "5",
            "--exp_name", "disjoint"]
    assert rm_main.main(args) == 0
    (log,) = (out / "logs" / "imagenet").glob("*.log")
    text = log.read_text()
    assert "train: 24 images 3x32x32" in text and "val: 12 images 3x32x32" in text
    assert '"model_name": "resnet34"' in text and '"topk": 5' in text
    (res_file,) = (out / "results" / "imagenet").glob("*.json")
    res = json.loads(res_file.read_text())
    # task 0: 3 classes in the head, so top-5 covers them all and every test sample of them counts
    assert res["task_acc"][0] == 100.0 and len(res["task_acc"]) == 2 and len(res["cls_acc"][-1]) == 6


def _mk(d: Path) -> Path:
    d.mkdir(parents=True, exist_ok=True)
    return d
