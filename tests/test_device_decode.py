"""The device decoder of streamed splits (utils.data.device_decode): run on the CPU it gives the pool
path's pixels byte for byte, its errors, its indexing; on CUDA (skipped without one) pixels within a
few levels of the CPU's."""
from __future__ import annotations

import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from utils.data import folder as D
from utils.data import device_decode
from utils.data.device_decode import SlabCache, check_decode_device, decode_on, jpeg_components, read_files
from utils.data.run_data import load_splits
from utils.data.streaming import StreamingImages


def smooth(rng: np.random.RandomState, h: int, w: int, channels: int = 3) -> np.ndarray:
    """A photo-like image: low-frequency random colours, bilinear upscaled, plus mild noise."""
    small = rng.randint(0, 256, (max(2, h // 6), max(2, w // 6), 3), dtype=np.uint8)
    im = np.asarray(Image.fromarray(small).resize((w, h), Image.BILINEAR), dtype=np.int16)
    im = np.clip(im + rng.randint(-8, 9, im.shape), 0, 255).astype(np.uint8)
    return im if channels == 3 else np.asarray(Image.fromarray(im).convert("L"))


def save(im: Image.Image, d: Path, i: int, png: bool = False) -> None:
    if png:
        im.save(d / f"{i}.png")
    else:
        im.save(d / f"{i}.jpg", quality=90)


def make_folder(root: Path, seed: int = 0) -> Path:
    """train and test: 24x24 RGB JPEGs, with a grey JPEG, a CMYK JPEG and an RGB PNG among them;
    grey: a split of mode L (its first image grey) of three sizes, RGB and grey JPEGs and a grey PNG."""
    rng = np.random.RandomState(seed)
    for split, n in (("train", 5), ("test", 2)):
        for c in range(3):
            (root / split / f"c{c}").mkdir(parents=True)
            for i in range(n):
                im = Image.fromarray(smooth(rng, 24, 24))
                kind = {(1, 1): "L", (0, 4): "CMYK"}.get((c, i), "RGB") if split == "train" else "RGB"
                save(im.convert(kind), root / split / f"c{c}", i, png=split == "train" and (c, i) == (2, 3))
    sizes = [(20, 20), (28, 28), (22, 30), (20, 20), (24, 24)]
    for c in range(3):
        (root / "grey" / f"c{c}").mkdir(parents=True)
        for i, (h, w) in enumerate(sizes):
            im = Image.fromarray(smooth(rng, h, w, 1 if (c + i) % 2 == 0 else 3))
            save(im, root / "grey" / f"c{c}", i, png=(c, i) == (1, 3))
    return root


@pytest.fixture(scope="module")
def root(tmp_path_factory) -> Path:
    return make_folder(tmp_path_factory.mktemp("dev") / "myset")


def streamed(root: Path, split: str, size: int | None, decode_device: str = "device", **kw) -> tuple:
    """The in-memory reference split and a StreamingImages over its files."""
    ref = D.load_split(root, split, size=size, use_cache=False)
    mode = "L" if ref.images.shape[1] == 1 else "RGB"
    s = StreamingImages(root, ref.files, mode, size, tuple(ref.images.shape), n_workers=1,
                        decode_device=decode_device, **kw)
    return ref.images, s


def index_cases(n: int) -> list:
    g = torch.Generator().manual_seed(0)
    return [torch.randint(0, n, (11,), generator=g),  # random, with repeats
            torch.tensor([5, 5, 5, 0, n - 1, 5]),  # repeated indices
            torch.empty(0, dtype=torch.long),  # empty
            torch.randperm(n, generator=g),  # everything, shuffled
            torch.tensor([-1, 3]),  # negative
            torch.tensor([[1, 2], [3, 1]]),  # 2-D
            torch.arange(n) % 3 == 0,  # bool mask
            7, slice(2, n, 4), [4, 1, 4]]


@pytest.mark.parametrize("split,size", [("train", None), ("train", 16), ("grey", 16), ("grey", 24)])
def test_device_decoder_on_cpu_equals_the_in_memory_and_pool_paths(root, split, size):
    """Native and resized (down, and a mix of resized and already-sized images), RGB and grey, with a
    PNG (and, in train, a CMYK JPEG) among the JPEGs: byte for byte, every kind of index."""
    ref, dev = streamed(root, split, size)
    _, pool = streamed(root, split, size, decode_device="cpu")
    n = len(ref)
    assert dev.shape == ref.shape and dev.on_device and not pool.on_device
    for idx in index_cases(n):
        got = dev[idx]
        assert got.dtype == torch.uint8 and got.device.type == "cpu"
        assert torch.equal(got, ref[idx]), idx
        assert torch.equal(got, pool[idx]), idx
    assert dev[torch.empty(0, dtype=torch.long)].shape == (0, *ref.shape[1:])
    with pytest.raises(IndexError):
        dev[torch.tensor([n])]
    with pytest.raises(IndexError):
        dev[torch.ones(n + 1, dtype=torch.bool)]
    assert dev.decoded == n and dev.prefetched == 0  # each image decoded once, then cached
    assert dev.served == pool.served > n


def test_jpegs_go_to_the_device_in_one_call_the_rest_to_the_pool(root, monkeypatch):
    """read_files keeps the JPEGs of 1 or 3 components for the device (not the PNG, not the CMYK
    JPEG); a batch's JPEGs are decoded by one decode_jpeg call, the others by the CPU decoder."""
    ref, dev = streamed(root, "train", 16)
    paths = [str(root / f) for f in dev.files]
    for_device = [d is not None for d in read_files(paths)]
    assert [f for f, ok in zip(dev.files, for_device) if not ok] == ["train/c0/4.jpg", "train/c2/3.png"]
    assert [jpeg_components(Path(p).read_bytes()) for p in paths[4:7]] == [4, 3, 1]  # CMYK, RGB, grey
    calls, lists = [], []
    real_list, real_jobs = device_decode._decode_list, StreamingImages._pool_jobs
    monkeypatch.setattr(device_decode, "_decode_list", lambda datas, device: lists.append(len(datas)) or
                        real_list(datas, device))
    monkeypatch.setattr(StreamingImages, "_pool_jobs", lambda self, pos, keys: calls.append(
        [self.files[keys[i]] for i in pos]) or real_jobs(self, pos, keys))
    idx = torch.randperm(len(ref))
    assert torch.equal(dev[idx], ref[idx])
    assert lists == [len(ref) - 2] and sorted(f for c in calls for f in c) == ["train/c0/4.jpg", "train/c2/3.png"]
    g = torch.tensor([0, 12])
    assert torch.equal(dev[g], ref[g]) and lists == [len(ref) - 2]  # cached


def test_small_device_cache_evicts_and_stays_exact(root):
    ref, dev = streamed(root, "grey", 16, cache_bytes=5 * 16 * 16)  # 5 images
    assert dev.cache_items == 5
    g = torch.Generator().manual_seed(1)
    for _ in range(8):
        idx = torch.randint(0, len(ref), (int(torch.randint(1, 9, (1,), generator=g)),), generator=g)
        assert torch.equal(dev[idx], ref[idx])
    assert len(dev._cache) == 5 and dev._cache.slab.shape == (5, 1, 16, 16)
    before, last = dev.decoded, list(dev._cache.slots)
    assert torch.equal(dev[torch.tensor(last)], ref[last]) and dev.decoded == before  # cached: no decode
    _, none = streamed(root, "grey", 16, cache_bytes=0)
    assert torch.equal(none[[1, 1, 2]], ref[[1, 1, 2]]) and torch.equal(none[[1, 2]], ref[[1, 2]])
    assert none.decoded == 4 and len(none._cache) == 0


def test_slab_cache_is_an_lru():
    c = SlabCache(3, (1, 2, 2), torch.device("cpu"))
    imgs = torch.arange(5, dtype=torch.uint8).view(5, 1, 1, 1).expand(5, 1, 2, 2)
    c.put([10, 11], imgs[:2])
    pos, got = c.get([11, 7, 10])
    assert pos == [0, 2] and got[:, 0, 0, 0].tolist() == [1, 0]
    c.put([12, 13], imgs[2:4])  # 11 is the least recently used: evicted
    assert 11 not in c and 10 in c and len(c) == 3
    c.put([20, 21, 22, 23], imgs[:4])  # more than it holds: the last 3
    assert sorted(c.slots) == [21, 22, 23] and c.get([23])[1][0, 0, 0, 0] == 3


def test_device_read_ahead_reads_planned_files_and_keeps_the_plan(root):
    ref, dev = streamed(root, "train", 16)
    n = len(ref)
    batches = list(torch.randperm(n, generator=torch.Generator().manual_seed(3)).split(5))  # 3 x 5, disjoint
    D.read_ahead(dev, batches)
    assert dev._ahead == 2 and len(dev._reading) == 10 and not dev._pending  # batches 0 and 1 being read
    for k, b in enumerate(batches):
        assert torch.equal(dev[b], ref[b])
        if k == 0:  # an unplanned request: exact, and the plan goes on
            other = torch.tensor([batches[2][0].item(), b[0].item()])
            assert torch.equal(dev[other], ref[other])
    assert dev.decoded == n and dev.prefetched == n - 1  # all read ahead but the one asked for early
    assert not dev._plan and not dev._reading
    D.read_ahead(dev, batches)  # a second pass: all cached, nothing read
    assert not dev._reading
    for b in batches:
        assert torch.equal(dev[b], ref[b])
    assert dev.decoded == n
    _, fresh = streamed(root, "train", 16, prefetch=2)
    fresh.plan([torch.tensor([9, 10])])
    plan = [torch.tensor([3, 3, 4]), torch.tensor([4, 5]), torch.tensor([6])]
    fresh.plan(plan)  # replaces the first
    assert sorted(fresh._reading) == [3, 4, 5, 6] and fresh._ahead == 3
    for b in plan:
        assert torch.equal(fresh[b], ref[b])
    assert fresh.decoded == fresh.prefetched == 4


@pytest.mark.parametrize("damage", ["truncated", "garbage_scan", "no_frame", "empty", "missing"])
def test_bad_file_raises_the_pool_paths_data_error(tmp_path, root, damage):
    """A JPEG with garbage between its frame header and its end (sent to decode_jpeg, which fails:
    the batch, then the file alone, then the CPU decoder); a JPEG cut in half, one without its frame
    header, an empty and a vanished file (straight to the CPU decoder): the pool path's DataError
    naming the file; the good images of a batch still load."""
    data = shutil.copytree(root, tmp_path / "myset")
    ref, dev = streamed(data, "train", 16)
    _, pool = streamed(data, "train", 16, decode_device="cpu")
    bad = data / dev.files[6]
    good = bad.read_bytes()
    sof = good.find(b"\xff\xc0")
    assert bad.suffix == ".jpg" and sof > 0
    if damage == "truncated":
        bad.write_bytes(good[:len(good) // 2])
    elif damage == "garbage_scan":
        bad.write_bytes(good[:sof + 19] + bytes(range(256)) * 4 + b"\xff\xd9")
    elif damage == "no_frame":
        bad.write_bytes(good[:sof])
    elif damage == "empty":
        bad.write_bytes(b"")
    else:
        bad.unlink()
    assert (read_files([str(bad)])[0] is not None) == (damage == "garbage_scan")
    assert torch.equal(dev[torch.tensor([0, 1, 2])], ref[[0, 1, 2]])
    with pytest.raises(D.DataError, match=bad.name) as e_dev:
        dev[torch.tensor([5, 6, 7])]
    with pytest.raises(D.DataError) as e_pool:
        pool[torch.tensor([5, 6, 7])]
    same = [re.sub(r"0x[0-9a-f]+", "0x", str(e.value)) for e in (e_dev, e_pool)]  # PIL names a BytesIO object
    assert str(bad) in str(e_dev.value) and same[0] == same[1]
    bad.write_bytes(good)  # repaired: the batch loads (nothing of it was cached)
    assert torch.equal(dev[torch.tensor([5, 6, 7])], ref[[5, 6, 7]])


def test_image_of_another_size_in_a_native_split_is_the_pool_paths_error(root):
    ref = D.load_split(root, "grey", size=20, use_cache=False)
    shape = (len(ref), 1, 20, 20)
    dev = StreamingImages(root, ref.files, "L", None, shape, n_workers=1, decode_device="device")
    pool = StreamingImages(root, ref.files, "L", None, shape, n_workers=1)
    assert torch.equal(dev[[0, 3]], ref.images[[0, 3]])  # the 20x20 ones
    with pytest.raises(D.DataError, match="is 28x28 but the images of its split are 20x20") as e_dev:
        dev[[0, 1]]
    with pytest.raises(D.DataError) as e_pool:
        pool[[0, 1]]
    assert str(e_dev.value) == str(e_pool.value)


def test_decode_device_names_and_their_checks(root):
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert [decode_on(n, cpu) for n in ("cpu", "auto", "device")] == ["cpu", "cpu", "device"]
    assert [decode_on(n, cuda) for n in ("cpu", "auto", "cuda", "device")] == ["cpu", "cuda", "cuda", "device"]
    with pytest.raises(D.DataError, match="--decode_device cuda"):
        decode_on("cuda", cpu)
    with pytest.raises(D.DataError, match="valid: cpu, auto, cuda, device"):
        decode_on("gpu", cpu)
    with pytest.raises(ValueError, match="valid: cpu, device, cuda"):
        check_decode_device("auto")
    ref, s = streamed(root, "train", None, decode_device="cuda")
    with pytest.raises(ValueError, match="bound to cpu"):
        s[[0]]
    assert "decode_device=cuda" in repr(s)


def test_load_splits_passes_decode_device(root):
    train, test, info = load_splits(root, "myset", torch.device("cpu"), 0.0, None, False, 1, decode_device="device")
    assert train.streaming and test.streaming
    assert train.images.decode_device == test.images.decode_device == "device"
    assert "decoded in batches on the device (JPEGs; other formats in 1 worker processes)" in info
    ref = D.load_split(root, "train", use_cache=False)
    assert torch.equal(train.images[torch.arange(len(ref))], ref.images)
    assert train.mean == pytest.approx(D.load_split(root, "train", use_cache=False, derive_stats=True).mean)
    train, _, info = load_splits(root, "myset", torch.device("cpu"), 0.0, None, False, 1, decode_device="auto")
    assert train.images.decode_device == "cpu" and "decoded in 1 worker processes" in info
    train, _, _ = load_splits(root, "myset", torch.device("cpu"), 0.0, None, False, 1)  # the default
    assert train.images.decode_device == "cpu"
    with pytest.raises(D.DataError, match="--decode_device cuda"):
        load_splits(root, "myset", torch.device("cpu"), 0.0, None, False, 1, decode_device="cuda")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA GPU")
@pytest.mark.parametrize("split,size", [("train", None), ("train", 16), ("grey", 16)])
def test_cuda_decoder_is_close_to_the_cpu_decoder(root, split, size):
    """nvjpeg against libjpeg (and a float resize against the CPU's fixed-point one): within a few
    levels. The PNG and the CMYK JPEG (nvjpeg cannot) come from the CPU decoder: exact. The measured
    difference is printed (pytest -s)."""
    ref, s = streamed(root, split, size, decode_device="cuda")
    s.to(torch.device("cuda"))
    idx = torch.randperm(len(ref), device="cuda")
    got = s[idx]
    assert got.device.type == "cuda" and got.dtype == torch.uint8 and got.shape == ref.shape
    diff = (got.cpu().int() - ref[idx.cpu()].int()).abs()
    print(f"\n{split} size {size}: CUDA vs CPU decode, max |diff| {int(diff.max())}, mean {diff.float().mean():.4f}, "
          f"share of pixels that differ {(diff > 0).float().mean():.4f}")
    assert int(diff.max()) <= 16 and float(diff.float().mean()) < 1.0
    exact = [i for i, f in enumerate(s.files) if f.endswith(".png") or f == "train/c0/4.jpg"]
    assert torch.equal(s[exact].cpu(), ref[exact])  # the CPU decoder's
    assert torch.equal(s[idx], got) and s.decoded == len(ref)  # from the cache on the device
    assert s._cache.slab.device.type == "cuda"


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA GPU")
def test_cuda_decoder_names_a_corrupt_jpeg_and_goes_on(tmp_path, root):
    """nvjpeg fails on a JPEG with garbage after its frame header: the CPU decoder's DataError names
    it, and the next batches decode on the GPU as before."""
    data = shutil.copytree(root, tmp_path / "myset")
    ref, s = streamed(data, "train", 16, decode_device="cuda")
    s.to(torch.device("cuda"))
    bad = data / s.files[6]
    good = bad.read_bytes()
    bad.write_bytes(good[:good.find(b"\xff\xc0") + 19] + bytes(range(256)) * 4 + b"\xff\xd9")
    with pytest.raises(D.DataError, match=bad.name):
        s[torch.tensor([5, 6, 7])]
    got = s[torch.tensor([8, 9, 10, 5])]
    assert got.device.type == "cuda"
    assert (got.cpu().int() - ref[[8, 9, 10, 5]].int()).abs().float().mean() < 1.0
