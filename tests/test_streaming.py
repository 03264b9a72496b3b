"""Splits over --data_budget_gb are streamed from disk: the same uint8 batches as the in-memory
tensor, the same run results, and corrupt images named."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import main as rm_main
from utils.data import folder as D
from utils.data.streaming import StreamingImages


def make_folder(root: Path, n_cls: int = 4, n_train: int = 6, n_test: int = 3, seed: int = 0,
                mixed: bool = False) -> Path:
    """RGB PNG and JPEG images; ``mixed``: grey images and other sizes too."""
    rng = np.random.RandomState(seed)
    for split, n in (("train", n_train), ("test", n_test)):
        for c in range(n_cls):
            d = root / split / f"c{c}"
            d.mkdir(parents=True, exist_ok=True)
            for i in range(n):
                side = int(rng.choice([12, 16, 21])) if mixed else 16
                wide = mixed and i % 3 == 2  # a few non-square images
                a = (rng.rand(side, side + 5 if wide else side, 3) * 60 + c * 50).astype(np.uint8)
                im = Image.fromarray(a[..., 0] if mixed and i % 4 == 1 else a)  # a few grey ones
                im.save(d / f"{i}.{'png' if i % 2 else 'jpg'}")
    return root


@pytest.fixture(scope="module")
def mixed(tmp_path_factory) -> Path:
    return make_folder(tmp_path_factory.mktemp("mixed") / "set", n_train=10, mixed=True)


def test_streaming_batches_equal_the_in_memory_tensor(mixed):
    ref = D.load_split(mixed, "train", size=16, use_cache=False)
    assert isinstance(ref.images, torch.Tensor) and not ref.streaming
    s = D.load_split(mixed, "train", size=16, use_cache=False, budget=0, n_workers=2)
    imgs = s.images
    assert isinstance(imgs, StreamingImages) and s.streaming and "streamed" in s.info
    assert imgs.shape == ref.images.shape and len(imgs) == len(ref.images) == 40
    assert imgs.dtype == torch.uint8 and imgs.to(torch.device("cpu")) is imgs
    assert s.files == ref.files and torch.equal(s.folder_label, ref.folder_label)
    g = torch.Generator().manual_seed(0)
    cases = [torch.randint(0, 40, (25,), generator=g),  # random, with repeats
             torch.tensor([5, 5, 5, 0, 39, 5]),  # repeated indices
             torch.empty(0, dtype=torch.long),  # empty
             torch.randperm(40, generator=g),  # everything, shuffled
             torch.tensor([-1, 3]),  # negative, as tensors allow
             torch.tensor([[1, 2], [3, 1]])]  # 2-D index
    for idx in cases:
        got = imgs[idx]
        assert got.dtype == torch.uint8 and got.device.type == "cpu"
        assert torch.equal(got, ref.images[idx]), idx
    assert imgs[torch.empty(0, dtype=torch.long)].shape == (0, 3, 16, 16)
    assert torch.equal(imgs[7], ref.images[7])
    assert torch.equal(imgs[3:30:4], ref.images[3:30:4])
    mask = torch.arange(40) % 3 == 0
    assert torch.equal(imgs[mask], ref.images[mask])
    with pytest.raises(IndexError):
        imgs[torch.tensor([40])]
    # every image was decoded once: the rest came from the LRU cache
    assert imgs.decoded == 40


def test_small_cache_evicts_and_stays_exact(mixed):
    ref = D.load_split(mixed, "train", size=16, use_cache=False)
    s = D.load_split(mixed, "train", size=16, use_cache=False, budget=0, n_workers=1)
    imgs = StreamingImages(mixed, s.files, s.images.mode, 16, tuple(ref.images.shape), n_workers=1,
                           cache_bytes=5 * 3 * 16 * 16)  # 5 images
    assert imgs.cache_items == 5
    g = torch.Generator().manual_seed(1)
    for _ in range(6):
        idx = torch.randint(0, 40, (int(torch.randint(1, 12, (1,), generator=g)),), generator=g)
        assert torch.equal(imgs[idx], ref.images[idx])
    assert len(imgs._lru) <= 5
    before = imgs.decoded
    last = list(imgs._lru)
    assert torch.equal(imgs[torch.tensor(last)], ref.images[last]) and imgs.decoded == before  # cached: no decode


def test_read_ahead_decodes_planned_batches_before_they_are_asked_for(mixed):
    """plan(): every image of the planned batches comes from the read-ahead queue, bytes equal to
    the in-memory tensor; an unplanned request in between is served and leaves the plan alone."""
    ref = D.load_split(mixed, "train", size=16, use_cache=False)
    s = D.load_split(mixed, "train", size=16, use_cache=False, budget=0, n_workers=2)
    imgs = s.images
    batches = list(torch.randperm(40, generator=torch.Generator().manual_seed(3)).split(8))  # 5 x 8, disjoint
    D.read_ahead(imgs, batches)
    assert imgs._ahead == 2 and len(imgs._pending) == 16  # batch 0 and 1 queued (prefetch 1)
    for k, b in enumerate(batches):
        assert torch.equal(imgs[b], ref.images[b])
        if k == 1:  # an unplanned request: exact, and the plan goes on
            other = torch.tensor([b[0].item(), 0, 1])
            assert torch.equal(imgs[other], ref.images[other])
    # image 1 is in batch 1 (cached by then); image 0 is in batch 4, not queued yet: decoded on the
    # unplanned request, then cached, so batch 4 queues only its other 7
    assert 1 in batches[1].tolist() and 0 in batches[4].tolist()
    assert imgs.decoded == 40 and imgs.prefetched == 39
    assert not imgs._plan and not imgs._pending
    # a second pass: all from the cache, nothing queued
    D.read_ahead(imgs, batches)
    assert not imgs._pending
    for b in batches:
        assert torch.equal(imgs[b], ref.images[b])
    assert imgs.decoded == 40
    # a new plan replaces an unfinished one; repeated indices within and across batches
    fresh = StreamingImages(mixed, s.files, imgs.mode, 16, tuple(ref.images.shape), n_workers=1, prefetch=2)
    plan = [torch.tensor([3, 3, 4]), torch.tensor([4, 5]), torch.tensor([6])]
    fresh.plan([torch.tensor([30, 31])])
    fresh.plan(plan)
    assert sorted(fresh._pending) == [3, 4, 5, 6] and fresh._ahead == 3
    for b in plan:
        assert torch.equal(fresh[b], ref.images[b])
    assert fresh.decoded == fresh.prefetched == 4
    D.read_ahead(ref.images, batches)  # an in-memory tensor: nothing to do


def test_corrupt_image_read_ahead_is_named_when_its_batch_is_asked_for(tmp_path):
    root = make_folder(tmp_path / "myset", n_train=4, n_test=2)
    ref = D.load_split(root, "train", size=16, use_cache=False)
    s = D.load_split(root, "train", size=16, use_cache=False, budget=0, n_workers=1)
    bad = root / s.files[5]
    bad.write_bytes(bad.read_bytes()[:40])
    first, second = torch.tensor([0, 1, 2]), torch.tensor([4, 5, 6])
    D.read_ahead(s.images, [first, second])  # both queued; the error waits in its future
    assert torch.equal(s.images[first], ref.images[first])
    with pytest.raises(D.DataError, match=bad.name) as e:
        s.images[second]
    assert str(bad) in str(e.value)


def test_parallel_first_decode_equals_the_serial_one(mixed, monkeypatch):
    """Large splits decode in the worker pool on first use: the same bytes, and the same error for
    images of different sizes, as decoding in this process."""
    serial = D.decode_split(mixed, "train", size=16)
    monkeypatch.setattr(D, "PARALLEL_DECODE_MIN", 0)
    par = D.decode_split(mixed, "train", size=16, n_workers=2)
    assert par.files == serial.files and torch.equal(par.images, serial.images)
    assert torch.equal(par.folder_label, serial.folder_label) and par.images.shape == (40, 3, 16, 16)
    with pytest.raises(D.DataError, match="different sizes") as e_par:
        D.decode_split(mixed, "train", n_workers=2)
    monkeypatch.setattr(D, "PARALLEL_DECODE_MIN", 10**9)
    with pytest.raises(D.DataError, match="different sizes") as e_ser:
        D.decode_split(mixed, "train")
    assert str(e_par.value) == str(e_ser.value)


def test_streamed_native_split_checks_sizes_up_front(mixed, tmp_path):
    """Without --input_size a streamed split with images of different sizes is refused before
    training, as the in-memory one is (header pass in the workers)."""
    with pytest.raises(D.DataError, match="different sizes") as e_mem:
        D.load_split(mixed, "train", use_cache=False)
    with pytest.raises(D.DataError, match="different sizes") as e_str:
        D.load_split(mixed, "train", use_cache=False, budget=0)
    assert str(e_mem.value) == str(e_str.value)


def base_args(data_dir: Path, out: Path) -> list[str]:
    return ["--dataset", "myset", "--data_dir", str(data_dir), "--out_dir", str(out), "--mode", "finetune",
            "--n_tasks", "2", "--n_cls_a_task", "2", "--n_init_cls", "4", "--memory_size", "8", "--n_epoch", "2",
            "--device", "cpu", "--transforms", "cutmix", "autoaug", "--model_name", "mlp400", "--batchsize", "4"]


def result(out: Path) -> dict:
    (p,) = (out / "results" / "myset").glob("*.json")
    return json.loads(p.read_text())


def log_text(out: Path) -> str:
    (p,) = (out / "logs" / "myset").glob("*.log")
    return p.read_text()


def test_run_with_budget_0_equals_the_in_memory_run(tmp_path):
    data = tmp_path / "data"
    make_folder(data / "myset", n_train=8, n_test=4)
    assert rm_main.main(base_args(data, tmp_path / "mem")) == 0
    shutil.rmtree(data / "myset" / ".cache")  # the streamed run derives the statistics itself
    assert rm_main.main(base_args(data, tmp_path / "stream") + ["--data_budget_gb", "0", "--n_worker", "2"]) == 0
    a, b = result(tmp_path / "mem"), result(tmp_path / "stream")
    for key in ("task_acc", "task_acc_final", "A_last", "A_last_final", "cls_acc", "memory_class_counts"):
        assert a[key] == b[key], key
    assert "in memory (within the budget of 4.00 GB)" in log_text(tmp_path / "mem")
    text = log_text(tmp_path / "stream")
    assert "train: 32 images 3x16x16 = 24.58 kB > budget 0 B: streamed from disk, decoded in 2 worker processes" in text
    assert "budget 0 B (--data_budget_gb)" in text


def test_corrupt_image_under_streaming_is_named(tmp_path, capsys):
    root = make_folder(tmp_path / "c" / "myset", n_train=4, n_test=2)
    ref = D.load_split(root, "train", size=16, use_cache=False)
    s = D.load_split(root, "train", size=16, use_cache=False, budget=0)  # no pass over the pixels
    bad = root / s.files[5]
    bad.write_bytes(bad.read_bytes()[:40])
    assert torch.equal(s.images[torch.tensor([0, 1, 2])], ref.images[[0, 1, 2]])  # good images still load
    with pytest.raises(D.DataError, match=bad.name) as e:
        s.images[torch.tensor([0, 5, 6])]
    assert str(bad) in str(e.value)
    # a whole run: the statistics pass meets it before training (exit 2, file named)
    out = tmp_path / "out"
    assert rm_main.main(base_args(tmp_path / "c", out) + ["--data_budget_gb", "0"]) == 2
    assert str(bad) in capsys.readouterr().err
    assert not (out / "results").exists()
    # an empty file is refused up front, before any decoding
    bad.write_bytes(b"")
    with pytest.raises(D.DataError, match=f"{bad.name} is empty"):
        D.load_split(root, "train", size=16, use_cache=False, budget=0)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA GPU")
def test_streaming_to_cuda_is_pinned_and_exact(mixed):
    ref = D.load_split(mixed, "train", size=16, use_cache=False)
    s = D.load_split(mixed, "train", size=16, use_cache=False, budget=0).to(torch.device("cuda"))
    idx = torch.randint(0, 40, (33,), device="cuda")
    got = s.images[idx]
    assert got.device.type == "cuda" and torch.equal(got.cpu(), ref.images[idx.cpu()])
    assert s.images.device.type == "cuda"
    batches = list(torch.randperm(40, device="cuda").split(16))  # read-ahead from CUDA indices
    D.read_ahead(s.images, batches)
    for b in batches:
        assert torch.equal(s.images[b].cpu(), ref.images[b.cpu()])
    assert s.images.prefetched > 0
