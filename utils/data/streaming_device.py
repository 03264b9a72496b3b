"""StreamingImages' device decoder: a batch's missing JPEGs decoded on the bound device, the LRU kept there."""
from __future__ import annotations

from concurrent.futures import Future

import torch

from utils.data.decode_pool import decode_chunk, get_pool, results, work_chunks
from utils.data.device_decode import DEVICE_CHUNK, SlabCache, decode_jpegs


class DeviceServing:
    """The device-decoder half of utils.data.streaming.StreamingImages (its module doc says how it serves)."""

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
        for pos, arr in zip([p for p, _ in cpu_jobs], results([f for _, f in cpu_jobs], self.n_workers)):
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
        return [(c, pool.submit(decode_chunk, self.root, [self.files[keys[i]] for i in c], self.mode,
                                self.resize_to, chw)) for c in work_chunks(positions, self.n_workers)]
