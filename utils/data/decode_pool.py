"""The shared pool of worker processes that decode images: decode a split, scan it, serve a streamed batch's chunks."""
from __future__ import annotations

import atexit
import math
import multiprocessing as mp
import os
import sys
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from tqdm import tqdm

from utils.data.decode import ConversionLog, DataError, conversions, read_image, size_mismatch_error
from utils.data.stats import mean_std

MAX_CHUNK = 64  # images per worker task
MAX_AUTO_WORKERS = 8

_pools: dict[int, ProcessPoolExecutor] = {}


def pool_size(n_workers: int) -> int:
    """--n_worker, or (0) one process per CPU core up to 8."""
    return n_workers if n_workers > 0 else max(1, min(MAX_AUTO_WORKERS, os.cpu_count() or 1))


def _init_worker() -> None:
    torch.set_num_threads(1)


def get_pool(n_workers: int) -> ProcessPoolExecutor:
    """The process pool of this size, started on first use and shared by every split of the
    process (spawned: safe after CUDA and OpenMP are initialised in the parent)."""
    n = pool_size(n_workers)
    pool = _pools.get(n)
    if pool is None:
        pool = ProcessPoolExecutor(n, mp_context=mp.get_context("spawn"), initializer=_init_worker)
        _pools[n] = pool
    return pool


def shutdown_pools() -> None:
    while _pools:
        _, pool = _pools.popitem()
        pool.shutdown(wait=True, cancel_futures=True)


atexit.register(shutdown_pools)


def result(fut, n_workers: int):
    """A future's result; a pool whose worker died is dropped (the next use starts a fresh one)."""
    try:
        return fut.result()
    except BrokenProcessPool as e:
        _pools.pop(pool_size(n_workers), None)
        raise RuntimeError(f"a worker process decoding images died ({e}); out of memory? Lower --n_worker") from e


def results(futures: list, n_workers: int):
    """The futures' results in order; on any error the rest are cancelled."""
    try:
        for fut in futures:
            yield result(fut, n_workers)
    finally:
        for fut in futures:
            fut.cancel()


def work_chunks(items: list, n_workers: int) -> list[list]:
    """About 4 chunks per worker, at most MAX_CHUNK items each."""
    if not items:
        return []
    size = max(1, min(MAX_CHUNK, math.ceil(len(items) / (4 * pool_size(n_workers)))))
    return [items[i:i + size] for i in range(0, len(items), size)]


# ----------------------------------------------------------------------------- worker tasks
def _decode_chunk_lenient(root: str, files: list[str], mode: str, size: int | None, chw: tuple[int, int, int]
                          ) -> tuple[np.ndarray, list[tuple[int, int]], dict[str, list]]:
    """Decoded images uint8 [k, C, H, W], each one's (H, W) and the conversions applied; an image of
    another size is left zero (the caller reports every mismatch at once)."""
    out = np.zeros((len(files), *chw), dtype=np.uint8)
    shapes = []
    log = ConversionLog()
    for i, f in enumerate(files):
        x, kinds = read_image(Path(root) / f, mode, size)
        log.add(kinds, f)
        shapes.append(tuple(x.shape[1:]))
        if tuple(x.shape) == tuple(chw):
            out[i] = x.numpy()
    return out, shapes, log.as_dict()


def decode_chunk(root: str, files: list[str], mode: str, size: int | None, chw: tuple[int, int, int]) -> np.ndarray:
    """Decoded images uint8 [k, C, H, W]; an image of another size is a DataError."""
    out, shapes, _ = _decode_chunk_lenient(root, files, mode, size, chw)
    for f, (h, w) in zip(files, shapes):
        if (h, w) != tuple(chw[1:]):
            raise DataError(f"image {Path(root) / f} is {w}x{h} but the images of its split are "
                            f"{chw[2]}x{chw[1]}; resize it, remove it, or give --input_size N")
    return out


def decode_into(out: torch.Tensor, root: Path, files: list[str], mode: str, size: int | None, n_workers: int = 0,
                desc: str = "decode", log: ConversionLog | None = None) -> list[tuple[int, int]]:
    """Decode every file into ``out`` (uint8 [N, C, H, W], rows in file order) in the worker
    pool; returns each image's (H, W), and adds the conversions applied to ``log``. Rows of images
    of another size are left zero."""
    pool = get_pool(n_workers)
    chunks = work_chunks(list(range(len(files))), n_workers)
    chw = tuple(out.shape[1:])
    futures = [pool.submit(_decode_chunk_lenient, str(root), [files[i] for i in c], mode, size, chw) for c in chunks]
    shapes: list[tuple[int, int]] = []
    bar = tqdm(total=len(files), desc=desc, disable=not sys.stderr.isatty(), leave=False)
    for c, (arr, sh, conv) in zip(chunks, results(futures, n_workers)):
        out[c[0]:c[-1] + 1] = torch.from_numpy(arr)
        shapes += sh
        if log is not None:
            log.merge(ConversionLog(conv))
        bar.update(len(c))
    bar.close()
    return shapes


HEADER_BYTES = 1 << 16  # what the header pass reads of a file


def _scan_chunk(root: str, files: list[str], mode: str, size: int | None, stats: bool) -> dict:
    """(H, W) of each image and the conversions decoding will apply: from the header alone, or
    (``stats``) decoded, with exact per-channel sums of the pixels and of their squares."""
    log = ConversionLog()
    if not stats:
        shapes = []
        for f in files:
            try:
                with open(Path(root) / f, "rb") as fh:
                    head = fh.read(HEADER_BYTES)
                log.add(conversions(head, mode), f)
                with Image.open(Path(root) / f) as im:
                    w, h = im.size
            except Exception as e:
                raise DataError(f"cannot read image {Path(root) / f}: {e.__class__.__name__}: {e}. "
                                "Re-create it (re-run utils.prepare) or remove it.") from None
            shapes.append((h, w))
        return {"shapes": shapes, "conversions": log.as_dict()}
    shapes, s1, s2 = [], None, None
    for f in files:
        x, kinds = read_image(Path(root) / f, mode, size)
        log.add(kinds, f)
        x = x.to(torch.int64)
        shapes.append(tuple(x.shape[1:]))
        a, b = x.sum((1, 2)).tolist(), (x * x).sum((1, 2)).tolist()
        s1 = a if s1 is None else [u + v for u, v in zip(s1, a)]
        s2 = b if s2 is None else [u + v for u, v in zip(s2, b)]
    return {"shapes": shapes, "s1": s1, "s2": s2, "conversions": log.as_dict()}


def scan_split(root: Path, split: str, files: list[str], mode: str, size: int | None, stats: bool,
               n_workers: int = 0) -> dict:
    """One pass over a streamed split in the worker pool before training: every image's size
    must agree (unless ``size`` resizes them all; header only), and with ``stats`` every image is
    decoded for the per-channel mean/std. Returns {"mean", "std"} (with ``stats``), "checked" and
    "conversions" (ConversionLog.as_dict())."""
    pool = get_pool(n_workers)
    chunks = work_chunks(files, n_workers)
    futures = [pool.submit(_scan_chunk, str(root), c, mode, size, stats) for c in chunks]
    shapes: list[tuple[int, int]] = []
    s1 = s2 = None
    log = ConversionLog()
    bar = tqdm(total=len(files), desc=f"scan {root.name}/{split}", disable=not sys.stderr.isatty(), leave=False)
    for c, r in zip(chunks, results(futures, n_workers)):
        shapes += [tuple(s) for s in r["shapes"]]
        log.merge(ConversionLog(r["conversions"]))
        if stats:
            s1 = r["s1"] if s1 is None else [u + v for u, v in zip(s1, r["s1"])]
            s2 = r["s2"] if s2 is None else [u + v for u, v in zip(s2, r["s2"])]
        bar.update(len(c))
    bar.close()
    if size is None:
        err = size_mismatch_error(root, split, files, shapes)
        if err is not None:
            raise err
    out: dict = {"checked": "decoded" if stats else "headers", "conversions": log.as_dict()}
    if stats:
        h, w = shapes[0]
        out["mean"], out["std"] = mean_std(s1, s2, len(files) * h * w)
    return out
