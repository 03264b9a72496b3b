"""Splits over the data budget: images decoded from disk on demand, in worker processes.

``StreamingImages`` stands in for the uint8 tensor [N, C, H, W] of an in-memory split, with what
the methods use of it: ``images[idx]`` (idx a LongTensor of dataset indices on any device, an int,
a list, a slice or a bool mask) gives the uint8 batch [len(idx), C, H, W] on the bound device, in
idx order; ``.shape``, ``len()``, ``.dtype``, ``.device``; ``.to(device)`` binds it to a device and
returns it. Pixels are those of the in-memory path to the byte (the same decoder,
utils.data.decode.decode_file).

How a batch is served: its distinct indices are looked up in an LRU cache of decoded images (so
a batch read twice, or a small memory read every epoch, is decoded once); the missing ones are
decoded in chunks by a shared pool of worker processes (spawned, one torch thread each); the
batch is assembled in pinned memory when the device is CUDA and copied to the GPU asynchronously.

Read-ahead: ``plan(chunks)`` announces the index batches about to be asked for, in order (the
training epoch and evaluation call it through utils.data.folder.read_ahead). Whenever the next planned
batch is asked for, the decoding of the ``prefetch`` batches after it is queued in the pool, so
the workers decode batch k+1 while the model trains on batch k. A request that is not the next
planned batch is served as usual and leaves the plan alone; a new plan replaces the old one.
A corrupt image raises the project's DataError naming the file when a batch first needs it,
read ahead or not.

Where the images are decoded (``decode_device``): "cpu" (the default) in the worker pool as
above; "device" or "cuda" in the main process, on the device the split is bound to, the JPEGs of a
batch's missing images in one batched torchvision decode_jpeg call (utils.data.device_decode: nvjpeg
on CUDA; other formats and failures still go to the worker pool). "cuda" is "device" that insists
on a CUDA binding (indexing a split bound elsewhere is an error); "device" on a CPU-bound split
decodes with libjpeg in this process (the tests' way to run it: the same pixels as the pool; nvjpeg's
may differ by a few levels). With the device decoder the batches and the LRU cache stay on the device
(``cache_bytes`` of GPU memory on CUDA, allocated on first use), and read-ahead reads the planned
batches' files in threads (the decoding itself waits for the request: it is synchronous); its
``prefetched`` counts the images whose bytes were read ahead. ``decoded`` counts images decoded
(cache misses) and ``served`` images returned, with either decoder. utils.data.run_data.load_splits
also takes "auto" (the device when the run is on CUDA, else "cpu").

The workers are spawned (not forked: the parent may hold CUDA and OpenMP state), so a script that
calls main.main() itself needs the usual ``if __name__ == "__main__":`` guard.
"""
from __future__ import annotations

import atexit
import math
import multiprocessing as mp
import os
import sys
from collections import OrderedDict, deque
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from tqdm import tqdm

from utils.data.decode import ConversionLog, DataError, conversions, read_image, size_mismatch_error
from utils.data.device_decode import (DEVICE_CHUNK, SlabCache, check_decode_device, decode_jpegs, read_chunks,
                                      read_files, readers)
from utils.data.stats import mean_std

DEFAULT_CACHE_BYTES = 256 << 20  # LRU of decoded images per split
DEFAULT_PREFETCH = 1  # planned batches decoded ahead of the one being served
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


def _result(fut, n_workers: int):
    """A future's result; a pool whose worker died is dropped (the next use starts a fresh one)."""
    try:
        return fut.result()
    except BrokenProcessPool as e:
        _pools.pop(pool_size(n_workers), None)
        raise RuntimeError(f"a worker process decoding images died ({e}); out of memory? Lower --n_worker") from e


def _results(futures: list, n_workers: int):
    """The futures' results in order; on any error the rest are cancelled."""
    try:
        for fut in futures:
            yield _result(fut, n_workers)
    finally:
        for fut in futures:
            fut.cancel()


def _chunks(items: list, n_workers: int) -> list[list]:
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


def _decode_chunk(root: str, files: list[str], mode: str, size: int | None, chw: tuple[int, int, int]) -> np.ndarray:
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
    chunks = _chunks(list(range(len(files))), n_workers)
    chw = tuple(out.shape[1:])
    futures = [pool.submit(_decode_chunk_lenient, str(root), [files[i] for i in c], mode, size, chw) for c in chunks]
    shapes: list[tuple[int, int]] = []
    bar = tqdm(total=len(files), desc=desc, disable=not sys.stderr.isatty(), leave=False)
    for c, (arr, sh, conv) in zip(chunks, _results(futures, n_workers)):
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
    chunks = _chunks(files, n_workers)
    futures = [pool.submit(_scan_chunk, str(root), c, mode, size, stats) for c in chunks]
    shapes: list[tuple[int, int]] = []
    s1 = s2 = None
    log = ConversionLog()
    bar = tqdm(total=len(files), desc=f"scan {root.name}/{split}", disable=not sys.stderr.isatty(), leave=False)
    for c, r in zip(chunks, _results(futures, n_workers)):
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


# ----------------------------------------------------------------------------- the tensor stand-in
class StreamingImages:
    """uint8 [N, C, H, W] images of one split, decoded from disk when indexed (see the module doc)."""

    dtype = torch.uint8
    ndim = 4

    def __init__(self, root: Path, files: list[str], mode: str, size: int | None, shape: tuple[int, int, int, int],
                 n_workers: int = 0, cache_bytes: int = DEFAULT_CACHE_BYTES, prefetch: int = DEFAULT_PREFETCH,
                 decode_device: str = "cpu") -> None:
        self.root = str(root)
        self.files = list(files)
        self.mode = mode
        self.resize_to = size
        self.shape = torch.Size(shape)
        if self.shape[0] != len(self.files):
            raise ValueError(f"shape {tuple(shape)} does not fit {len(self.files)} files")
        self.n_workers = n_workers
        self.decode_device = check_decode_device(decode_device)  # "cpu": the worker pool; else the bound device
        self.device = torch.device("cpu")
        self.cache_items = cache_bytes // max(1, math.prod(self.shape[1:]))
        self._lru: OrderedDict[int, torch.Tensor] = OrderedDict()
        self.prefetch = max(0, int(prefetch))
        self._plan: deque[torch.Tensor] = deque()  # planned index batches not yet asked for (CPU)
        self._ahead = 0  # how many of them have their decoding queued
        self._pending: dict[int, tuple[Future, int]] = {}  # index -> (decoding future, row in its chunk)
        self._reading: dict[int, tuple[Future, int]] = {}  # device decoder: index -> (bytes future, row)
        self._cache: SlabCache | None = None  # device decoder: the LRU, on the bound device
        self.decoded = 0  # images decoded so far (cache misses)
        self.prefetched = 0  # of which decoded (device decoder: read) ahead, before their batch was asked for
        self.served = 0  # images returned so far

    def __len__(self) -> int:
        return self.shape[0]

    def __repr__(self) -> str:
        cached = len(self._cache or ()) if self.on_device else len(self._lru)
        return (f"StreamingImages({self.root}, shape={tuple(self.shape)}, device={self.device}, "
                f"decode_device={self.decode_device}, cached={cached}/{self.cache_items})")

    @property
    def on_device(self) -> bool:
        """Whether images are decoded on the bound device (else in the worker pool)."""
        return self.decode_device != "cpu"

    def size(self, dim: int | None = None):
        return self.shape if dim is None else self.shape[dim]

    def to(self, device, non_blocking: bool = False) -> "StreamingImages":
        """Bind to ``device`` (batches are returned there); returns itself."""
        device = torch.device(device)
        if self._cache is not None and self._cache.device != device:
            self._cache = None  # the device decoder's LRU lives on the old device
        self.device = device
        return self

    # ------------------------------------------------------------------ read-ahead
    def plan(self, chunks: list) -> None:
        """The index batches about to be asked for, in order (see the module doc); replaces any
        earlier plan. One host copy of the indices per call."""
        self._drop_plan()
        sizes = [len(c) for c in chunks]
        if not sizes or not sum(sizes):
            return
        flat = torch.cat([torch.as_tensor(c).reshape(-1) for c in chunks]).cpu()
        self._plan = deque(self._flat_indices(c)[0] for c in flat.split(sizes))
        self._queue_ahead(self.prefetch + 1)  # the first batch, and those after it

    def _drop_plan(self) -> None:
        for fut, _ in (*self._pending.values(), *self._reading.values()):
            fut.cancel()
        self._pending.clear()
        self._reading.clear()
        self._plan.clear()
        self._ahead = 0

    def _submit(self, keys: list[int]) -> None:
        """Queue the decoding of images ``keys`` (neither cached nor queued) in the worker pool; with
        the device decoder, the reading of their files in threads."""
        if not keys:
            return
        if self.on_device:
            for c in read_chunks(keys):
                fut = readers().submit(read_files, [os.path.join(self.root, self.files[k]) for k in c])
                for row, k in enumerate(c):
                    self._reading[k] = (fut, row)
            return
        pool = get_pool(self.n_workers)
        chw = tuple(self.shape[1:])
        for c in _chunks(keys, self.n_workers):
            fut = pool.submit(_decode_chunk, self.root, [self.files[k] for k in c], self.mode, self.resize_to, chw)
            for row, k in enumerate(c):
                self._pending[k] = (fut, row)

    def _queue_ahead(self, n: int) -> None:
        """Queue the decoding of the first ``n`` planned batches (those not queued yet)."""
        while self._ahead < min(n, len(self._plan)):
            self._submit([k for k in torch.unique(self._plan[self._ahead]).tolist() if not self._queued(k)])
            self._ahead += 1

    def _queued(self, k: int) -> bool:
        """Whether image ``k`` is cached, or its decoding (device decoder: reading) queued."""
        if self.on_device:
            return k in self._reading or (self._cache is not None and k in self._cache)
        return k in self._lru or k in self._pending

    def _advance(self, flat: torch.Tensor) -> None:
        """If ``flat`` is the next planned batch: take it off the plan and queue the decoding of
        the batches after it."""
        if self._plan and len(self._plan[0]) == len(flat) and torch.equal(self._plan[0], flat):
            self._plan.popleft()
            self._ahead = max(0, self._ahead - 1)
            self._queue_ahead(self.prefetch)

    # ------------------------------------------------------------------ indexing
    def _flat_indices(self, idx) -> tuple[torch.Tensor, tuple[int, ...]]:
        """Indices as a CPU long vector, and the leading shape of the result."""
        n = len(self)
        if isinstance(idx, slice):
            return torch.arange(n)[idx], (len(range(*idx.indices(n))),)
        if isinstance(idx, (int, np.integer)):
            t = torch.tensor(int(idx))
        else:
            t = torch.as_tensor(idx)
        if t.device.type != "cpu":
            t = t.cpu()
        if t.dtype == torch.bool:
            if t.shape != (n,):
                raise IndexError(f"boolean index of shape {tuple(t.shape)} does not match {n} images")
            t = t.nonzero().flatten()
        elif t.dtype not in (torch.int64, torch.int32, torch.int16, torch.int8, torch.uint8):
            if t.numel() == 0:  # e.g. torch.tensor([]) is float
                t = t.long()
            else:
                raise IndexError(f"images can only be indexed by integer or boolean tensors, not {t.dtype}")
        lead = tuple(t.shape)
        t = t.reshape(-1).long()
        if t.numel():
            lo, hi = int(t.min()), int(t.max())
            if lo < -n or hi >= n:
                bad = hi if hi >= n else lo
                raise IndexError(f"index {bad} is out of bounds for dimension 0 with size {n}")
            if lo < 0:
                t = torch.where(t < 0, t + n, t)
        return t, lead

    def __getitem__(self, idx) -> torch.Tensor:
        flat, lead = self._flat_indices(idx)
        if self.on_device:
            return self._serve_on_device(flat, lead)
        pin = self.device.type == "cuda"
        out = torch.empty((len(flat), *self.shape[1:]), dtype=torch.uint8, pin_memory=pin)
        if len(flat):
            self._advance(flat)
            uniq, inverse = torch.unique(flat, return_inverse=True)
            torch.index_select(self._fetch(uniq.tolist()), 0, inverse, out=out)
        self.served += len(flat)
        out = out.view(*lead, *self.shape[1:])
        if self.device.type == "cpu":
            return out
        return out.to(self.device, non_blocking=pin)

    def _fetch(self, keys: list[int]) -> torch.Tensor:
        """Decoded images of distinct indices ``keys`` (CPU, in that order): LRU hits copied, the
        rest collected from the worker pool (queued ahead by the plan, or now)."""
        rows = torch.empty((len(keys), *self.shape[1:]), dtype=torch.uint8)
        todo: list[int] = []
        for j, k in enumerate(keys):
            hit = self._lru.get(k)
            if hit is None:
                todo.append(j)
            else:
                self._lru.move_to_end(k)
                rows[j] = hit
        if not todo:
            return rows
        now = [keys[j] for j in todo if keys[j] not in self._pending]
        self._submit(now)
        arrays: dict[int, np.ndarray] = {}
        for j in todo:
            fut, row = self._pending.pop(keys[j])
            if id(fut) not in arrays:
                arrays[id(fut)] = _result(fut, self.n_workers)
            rows[j] = torch.from_numpy(arrays[id(fut)][row])
        self.decoded += len(todo)
        self.prefetched += len(todo) - len(now)
        if self.cache_items:
            for j in todo[-self.cache_items:]:
                self._lru[keys[j]] = rows[j].clone()
            while len(self._lru) > self.cache_items:
                self._lru.popitem(last=False)
        return rows

    # ------------------------------------------------------------------ the device decoder
    def _serve_on_device(self, flat: torch.Tensor, lead: tuple[int, ...]) -> torch.Tensor:
        """__getitem__ with the device decoder: the batch is assembled on the bound device."""
        if self.decode_device == "cuda" and self.device.type != "cuda":
            raise ValueError(f"decode_device 'cuda' decodes on the CUDA device the images are bound to, but they "
                             f"are bound to {self.device}: bind them with .to('cuda'), or use decode_device 'device'")
        chw = tuple(self.shape[1:])
        if len(flat):
            self._advance(flat)
            uniq, inverse = torch.unique(flat, return_inverse=True)
            out = self._fetch_on_device(uniq.tolist()).index_select(0, inverse.to(self.device))
        else:
            out = torch.empty((0, *chw), dtype=torch.uint8, device=self.device)
        self.served += len(flat)
        return out.view(*lead, *chw)

    def _fetch_on_device(self, keys: list[int]) -> torch.Tensor:
        """Decoded images of distinct indices ``keys`` on the bound device, in that order: the cached
        ones gathered from the LRU, the rest decoded now (and cached)."""
        if self._cache is None:
            self._cache = SlabCache(min(self.cache_items, len(self)), tuple(self.shape[1:]), self.device)
        pos, hits = self._cache.get(keys)
        if len(pos) == len(keys):
            return hits
        hit = set(pos)
        todo = [j for j in range(len(keys)) if j not in hit]
        new = self._decode_on_device([keys[j] for j in todo])
        self._cache.put([keys[j] for j in todo], new)
        if not pos:
            return new
        rows = torch.empty((len(keys), *self.shape[1:]), dtype=torch.uint8, device=self.device)
        rows[torch.tensor(pos, device=self.device)] = hits
        rows[torch.tensor(todo, device=self.device)] = new
        return rows

    def _decode_on_device(self, keys: list[int]) -> torch.Tensor:
        """Images ``keys`` (none cached) decoded on the bound device, uint8 [len(keys), C, H, W]:
        JPEGs by decode_jpeg in chunks of DEVICE_CHUNK, the rest (other formats, failures) in the
        worker pool, whose DataError names a corrupt file."""
        ahead = sum(k in self._reading for k in keys)
        self._submit([k for k in keys if k not in self._reading])
        datas = self._read_bytes(keys)
        cpu_jobs = self._pool_jobs([i for i, d in enumerate(datas) if d is None], keys)  # started first
        jpeg = [i for i, d in enumerate(datas) if d is not None]
        chw = tuple(self.shape[1:])
        whole = len(jpeg) == len(keys) <= DEVICE_CHUNK  # one call decodes them all: its output is the result
        out = None if whole else torch.empty((len(keys), *chw), dtype=torch.uint8, device=self.device)
        for c in range(0, len(jpeg), DEVICE_CHUNK):
            part = jpeg[c:c + DEVICE_CHUNK]
            x, failed = decode_jpegs([datas[i] for i in part], self.mode, self.resize_to, chw, self.device)
            cpu_jobs += self._pool_jobs([part[i] for i in failed], keys)
            if whole:
                out = x
            else:
                out[torch.tensor(part, device=self.device)] = x
        for pos, arr in zip([p for p, _ in cpu_jobs], _results([f for _, f in cpu_jobs], self.n_workers)):
            out[torch.tensor(pos, device=self.device)] = torch.from_numpy(arr).to(self.device)
        self.decoded += len(keys)
        self.prefetched += ahead
        return out

    def _read_bytes(self, keys: list[int]) -> list[torch.Tensor | None]:
        """The files' bytes of images ``keys`` (their reading queued), collected from the threads."""
        done: dict[int, list] = {}
        datas = []
        for k in keys:
            fut, row = self._reading.pop(k)
            if id(fut) not in done:
                done[id(fut)] = fut.result()
            datas.append(done[id(fut)][row])
        return datas

    def _pool_jobs(self, positions: list[int], keys: list[int]) -> list[tuple[list[int], Future]]:
        """Queue the CPU decoding of images ``keys[i]`` for i in ``positions`` in the worker pool:
        (positions, future) per chunk."""
        if not positions:
            return []
        pool = get_pool(self.n_workers)
        chw = tuple(self.shape[1:])
        return [(c, pool.submit(_decode_chunk, self.root, [self.files[keys[i]] for i in c], self.mode,
                                self.resize_to, chw)) for c in _chunks(positions, self.n_workers)]
