"""Streamed vs in-memory data path on an ImageNet-like JPEG folder: one training epoch each, read-ahead on and off.

With --decoders (e.g. pool8,pool16,device) the streamed rows compare decoders instead: the worker pool
at N processes against the device decoder (batched torchvision decode_jpeg on --device: nvjpeg on
CUDA), each with a decode-only pass (images/s of the decoder alone) and a training epoch, printed as
images/s and as the streamed-epoch / in-memory-epoch ratio."""
from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import re
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from PIL import Image  # noqa: E402

from main import set_seed  # noqa: E402
from methods.engine.optim import make_optimizer  # noqa: E402
from models import build_model  # noqa: E402
from utils.data import folder as D  # noqa: E402
from utils.data.augment import normalize  # noqa: E402
from utils.data.batches import AUG_CHUNK  # noqa: E402
from utils.data.decode_pool import get_pool, pool_size, shutdown_pools  # noqa: E402
from utils.data.run_data import resolve_device  # noqa: E402
from utils.data.streaming import StreamingImages  # noqa: E402

MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def _write_class(job: tuple[str, int, int, int, int]) -> int:
    """JPEGs of one class: smooth random images (a photo's spectrum more than noise's), quality 90."""
    root, c, n, side, seed = job
    rng = np.random.RandomState(seed + c)
    d = Path(root) / "train" / f"class{c:03d}"
    d.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        small = rng.randint(0, 256, (side // 16, side // 16, 3), dtype=np.uint8)
        im = Image.fromarray(small).resize((side, side), Image.BILINEAR)
        noise = rng.randint(-12, 13, (side, side, 3))
        Image.fromarray(np.clip(np.asarray(im, dtype=np.int16) + noise, 0, 255).astype(np.uint8)).save(
            d / f"{i:05d}.jpg", quality=90)
    return n


def make_folder(root: Path, n: int, classes: int, side: int, seed: int = 0) -> Path:
    """root/train/class*/*.jpg, n images over ``classes`` classes (written once; kept for reruns)."""
    stamp = root / f".made_{n}_{classes}_{side}"
    if stamp.is_file():
        return root
    per = -(-n // classes)
    jobs = [(str(root), c, min(per, n - c * per), side, seed) for c in range(classes) if n - c * per > 0]
    with mp.get_context("spawn").Pool(pool_size(0)) as pool:
        pool.map(_write_class, jobs)
    stamp.touch()
    return root


def epoch(images, labels: torch.Tensor, model, opt, a, dev: torch.device) -> float:
    """Seconds for one epoch over a fixed permutation: chunks of a.chunk images fetched (read
    ahead when streaming), then SGD steps of a.batch on each chunk."""
    perm = torch.randperm(len(labels), generator=torch.Generator().manual_seed(a.seed)).to(dev)
    chunks = list(perm.split(a.chunk))
    model.train()
    if dev.type == "cuda":
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    D.read_ahead(images, chunks)
    for idx in chunks:
        x_all = images[idx]
        y_all = labels[idx]
        for s in range(0, len(idx), a.batch):
            x = normalize(x_all[s:s + a.batch], MEAN, STD)
            opt.zero_grad(set_to_none=True)
            F.cross_entropy(model(x), y_all[s:s + a.batch]).backward()
            opt.step()
    if dev.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - t0


def parse_decoders(text: str, workers: int) -> list[tuple[str, int | None]]:
    """--decoders "pool8,pool16,device" -> [(name, processes or None for the device decoder)]."""
    out = []
    for name in filter(None, (t.strip() for t in text.split(","))):
        m = re.fullmatch(r"pool(\d*)", name)
        if name == "device":
            out.append((name, None))
        elif m and (not m.group(1) or int(m.group(1)) > 0):
            out.append((name, int(m.group(1)) if m.group(1) else pool_size(workers)))
        else:
            raise ValueError(f"unknown decoder '{name}': poolN (N worker processes), pool (--workers) or device")
    return out


def start_pool(n: int) -> None:
    """All ``n`` worker processes of the pool started (and streaming imported there), outside the timings."""
    pool = get_pool(n)
    for fut in [pool.submit(pool_size, 1) for _ in range(n)]:
        fut.result()


def decode_pass(images: StreamingImages, a, dev: torch.device) -> float:
    """Seconds to fetch one epoch's chunks (read ahead as in an epoch) without training: the decoder alone."""
    chunks = list(torch.randperm(a.n, generator=torch.Generator().manual_seed(a.seed)).to(dev).split(a.chunk))
    if dev.type == "cuda":
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    D.read_ahead(images, chunks)
    for idx in chunks:
        images[idx]
    if dev.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - t0


def streamed(root: Path, files: list[str], a, procs: int | None, dev: torch.device) -> StreamingImages:
    """The split streamed without LRU cache, decoded in a pool of ``procs`` processes or (None) on ``dev``."""
    return StreamingImages(root, files, "RGB", a.input_size, (a.n, 3, a.input_size, a.input_size),
                           procs or a.workers, cache_bytes=0, prefetch=a.read_ahead,
                           decode_device="cpu" if procs else "device").to(dev)


def compare_decoders(a, root: Path, files: list[str], dev: torch.device, train, base: float) -> None:
    """One row per decoder of --decoders: a decode-only pass and a training epoch, streamed with
    read-ahead --read_ahead and no LRU cache; the epoch against the in-memory one (``base`` s)."""
    print(f"{'decoder (read-ahead ' + str(a.read_ahead) + ')':<40}{'decode img/s':>13}{'epoch s':>9}{'img/s':>8}"
          f"{'ahead':>11}{'epoch/in-memory':>17}")
    ratios = []
    for name, procs in parse_decoders(a.decoders, a.workers):
        shutdown_pools()  # one pool at a time: no idle processes of another size
        if procs is not None:
            start_pool(procs)
        streamed(root, files, a, procs, dev)[torch.arange(min(a.n, 16), device=dev)]  # warm-up (nvjpeg, threads)
        dec_s = decode_pass(streamed(root, files, a, procs, dev), a, dev)
        images = streamed(root, files, a, procs, dev)
        ep_s = train(images)
        label = (f"{name} ({procs} processes)" if procs else
                 f"{name} ({'nvjpeg' if dev.type == 'cuda' else 'libjpeg, main process'}, batched)")
        print(f"{label:<40}{a.n / dec_s:>13.0f}{ep_s:>9.2f}{a.n / ep_s:>8.0f}"
              f"{f'{images.prefetched}/{images.decoded}':>11}{ep_s / base:>16.2f}x")
        ratios.append(f"{name}: {ep_s / base:.2f}x")
    print("streamed/in-memory epoch time: " + " | ".join(ratios))
    print("(ahead: images decoded ahead of their request by the pool; for device, images whose files were read ahead "
          "in threads - its decoding waits for the request)")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--root", default="/tmp/bench_stream", help="where the synthetic JPEG folder is written (kept)")
    p.add_argument("--n", type=int, default=12288, help="training images")
    p.add_argument("--classes", type=int, default=100)
    p.add_argument("--side", type=int, default=256, help="stored JPEG side")
    p.add_argument("--input_size", type=int, default=224, help="decoded (resized) side")
    p.add_argument("--model", default="resnet34")
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--chunk", type=int, default=AUG_CHUNK, help="images per fetch (the methods' augmentation chunk)")
    p.add_argument("--workers", type=int, default=0, help="decoding processes (0: one per core up to 8)")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--decoders", default="",
                   help="compare streamed decoders instead of read-ahead 0/1/2, e.g. pool8,pool16,device: poolN = "
                        "the worker pool with N processes (pool: --workers), device = batched decode_jpeg on --device "
                        "(nvjpeg on CUDA, libjpeg in this process on the CPU); a decode-only pass and an epoch each")
    p.add_argument("--read_ahead", type=int, default=1, help="read-ahead of the --decoders rows")
    a = p.parse_args(argv)
    try:
        parse_decoders(a.decoders, a.workers)
    except ValueError as e:
        p.error(str(e))
    dev = resolve_device(a.device)
    root = Path(a.root)
    t0 = time.perf_counter()
    make_folder(root, a.n, a.classes, a.side, a.seed)
    print(f"device: {dev} ({torch.cuda.get_device_name(dev) if dev.type == 'cuda' else 'CPU'}) | torch "
          f"{torch.__version__} | {a.n} JPEGs {a.side}px -> {a.input_size}px, {a.classes} classes "
          f"(folder ready in {time.perf_counter() - t0:.1f} s) | {a.model}, batch {a.batch}, chunk {a.chunk} | "
          f"{pool_size(a.workers)} decoding processes | {os.cpu_count()} CPU cores")
    get_pool(a.workers).submit(int, 0).result()  # workers started outside the timings

    t0 = time.perf_counter()
    mem = D.load_split(root, "train", size=a.input_size, use_cache=False, n_workers=a.workers)
    decode_s = time.perf_counter() - t0
    labels = mem.folder_label.to(dev)
    procs = pool_size(a.workers) if a.n >= D.PARALLEL_DECODE_MIN and pool_size(a.workers) > 1 else 1
    rows = [(f"in-memory first decode ({procs} process{'es' if procs > 1 else ''})", decode_s, None)]

    def train(images) -> float:
        set_seed(a.seed)
        model = build_model(a.model, a.classes, 3, a.input_size).to(dev)
        opt = make_optimizer("sgd", 0.05, model, "cos")[0]
        return epoch(images, labels, model, opt, a, dev)

    rows.append(("epoch, in memory on the device", train(mem.images.to(dev)), None))
    files = mem.files
    del mem
    if not a.decoders:
        for pf in (0, 1, 2):
            s = StreamingImages(root, files, "RGB", a.input_size,
                                (a.n, 3, a.input_size, a.input_size), a.workers, cache_bytes=0, prefetch=pf).to(dev)
            rows.append((f"epoch, streamed, read-ahead {pf}", train(s), s))
    print(f"{'':<40}{'seconds':>9}{'images/s':>10}{'read ahead':>12}")
    for name, sec, images in rows:
        ahead = f"{images.prefetched}/{images.decoded}" if isinstance(images, StreamingImages) else ""
        print(f"{name:<40}{sec:>9.2f}{a.n / sec:>10.0f}{ahead:>12}")
    base = rows[1][1]
    if a.decoders:
        compare_decoders(a, root, files, dev, train, base)
    else:
        print("streamed/in-memory epoch time: " + " | ".join(f"read-ahead {r[2].prefetch}: {r[1] / base:.2f}x"
                                                              for r in rows[2:]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
