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

import math
import os
from collections import OrderedDict, deque
from concurrent.futures import Future
from pathlib import Path

import numpy as np
import torch

from utils.data.decode_pool import decode_chunk, get_pool, result, work_chunks
from utils.data.device_decode import SlabCache, check_decode_device, read_chunks, read_files, readers
from utils.data.streaming_device import DeviceServing

DEFAULT_CACHE_BYTES = 256 << 20  # LRU of decoded images per split
DEFAULT_PREFETCH = 1  # planned batches decoded ahead of the one being served


# ----------------------------------------------------------------------------- the tensor stand-in
class StreamingImages(DeviceServing):
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
        for c in work_chunks(keys, self.n_workers):
            fut = pool.submit(decode_chunk, self.root, [self.files[k] for k in c], self.mode, self.resize_to, chw)
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
                arrays[id(fut)] = result(fut, self.n_workers)
            rows[j] = torch.from_numpy(arrays[id(fut)][row])
        self.decoded += len(todo)
        self.prefetched += len(todo) - len(now)
        if self.cache_items:
            for j in todo[-self.cache_items:]:
                self._lru[keys[j]] = rows[j].clone()
            while len(self._lru) > self.cache_items:
                self._lru.popitem(last=False)
        return rows
