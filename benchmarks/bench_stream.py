"""Streamed vs in-memory data path on an ImageNet-like JPEG folder: one training epoch each, read-ahead on and off."""
from __future__ import annotations

import argparse
import multiprocessing as mp
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from PIL import Image  # noqa: E402

from main import set_seed  # noqa: E402
from methods.optim import make_optimizer  # noqa: E402
from models import build_model  # noqa: E402
from utils.data import folder as D  # noqa: E402
from utils.data.augment import normalize  # noqa: E402
from utils.data.batches import AUG_CHUNK  # noqa: E402
from utils.data.run_data import resolve_device  # noqa: E402
from utils.data.streaming import StreamingImages, get_pool, pool_size  # noqa: E402

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
    a = p.parse_args(argv)
    dev = resolve_device(a.device)
    root = Path(a.root)
    t0 = time.perf_counter()
    make_folder(root, a.n, a.classes, a.side, a.seed)
    print(f"device: {dev} ({torch.cuda.get_device_name(dev) if dev.type == 'cuda' else 'CPU'}) | torch "
          f"{torch.__version__} | {a.n} JPEGs {a.side}px -> {a.input_size}px, {a.classes} classes "
          f"(folder ready in {time.perf_counter() - t0:.1f} s) | {a.model}, batch {a.batch}, chunk {a.chunk} | "
          f"{pool_size(a.workers)} decoding processes")
    get_pool(a.workers).submit(int, 0).result()  # workers started outside the timings

    t0 = time.perf_counter()
    mem = D.load_split(root, "train", size=a.input_size, use_cache=False, n_workers=a.workers)
    decode_s = time.perf_counter() - t0
    labels = mem.folder_label.to(dev)
    procs = pool_size(a.workers) if a.n >= D.PARALLEL_DECODE_MIN and pool_size(a.workers) > 1 else 1
    rows = [(f"in-memory first decode ({procs} process{'es' if procs > 1 else ''})", decode_s, None)]

    def run(name: str, images) -> None:
        set_seed(a.seed)
        model = build_model(a.model, a.classes, 3, a.input_size).to(dev)
        opt = make_optimizer("sgd", 0.05, model, "cos")[0]
        rows.append((name, epoch(images, labels, model, opt, a, dev), images))

    run("epoch, in memory on the device", mem.images.to(dev))
    files = mem.files
    del mem
    for pf in (0, 1, 2):
        s = StreamingImages(root, files, "RGB", a.input_size,
                            (a.n, 3, a.input_size, a.input_size), a.workers, cache_bytes=0, prefetch=pf).to(dev)
        run(f"epoch, streamed, read-ahead {pf}", s)
    print(f"{'':<40}{'seconds':>9}{'images/s':>10}{'read ahead':>12}")
    for name, sec, images in rows:
        ahead = f"{images.prefetched}/{images.decoded}" if isinstance(images, StreamingImages) else ""
        print(f"{name:<40}{sec:>9.2f}{a.n / sec:>10.0f}{ahead:>12}")
    base = rows[1][1]
    print("streamed/in-memory epoch time: " + " | ".join(f"read-ahead {r[2].prefetch}: {r[1] / base:.2f}x"
                                                          for r in rows[2:]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
