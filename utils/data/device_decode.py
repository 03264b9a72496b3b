"""JPEG decoding on a torch device for streamed splits: one batched torchvision decode_jpeg call per chunk.

utils.data.streaming.StreamingImages with ``decode_device="device"`` (or ``"cuda"``) decodes the
images a batch misses here, in the main process, on the device the split is bound to, instead of
in its worker processes (``decode_device="cpu"``, the default):

- the files' bytes are read in a small thread pool (``read_files``; for planned batches ahead of
  time, see StreamingImages.plan);
- the JPEGs among them (by their first bytes) are decoded by ONE call of
  ``torchvision.io.decode_jpeg(list, device=..., mode=RGB)`` per chunk of at most DEVICE_CHUNK
  images: nvjpeg on CUDA, libjpeg on the CPU;
- the decoded images of one (H, W) are stacked and, batched on the device, converted to grey with
  utils.data.decode.rgb_to_grey's integer formula (a split of mode "L") and resized with
  resize_uint8 (a split with a size), as decode_file does one image at a time;
- every other file (PNG, CMYK JPEG, a JPEG cut short, ...; see for_the_device), a JPEG the
  batched call and then its own call fail on, and, in a split without a size, an image of another
  size go to the CPU decoder (the worker pool, decode_file): their pixels and errors (the
  DataError naming the file) are the pool path's.

Pixels: on the CPU (a split bound to the CPU with ``decode_device="device"``; what the tests run)
they equal the pool path's byte for byte, both being libjpeg and the same conversions. On CUDA,
nvjpeg's IDCT and chroma upsampling are not libjpeg's, and a uint8 resize runs in float32 there
(fixed point on the CPU), so pixels may differ from the CPU decode by a few levels; the bound is
unknown until measured on a GPU (tests/test_device_decode.py's CUDA test prints it).

The decoded images stay on the device; StreamingImages keeps its LRU of them there too, in one
preallocated tensor (SlabCache), so a cache lookup or insert is one gather or scatter.
"""
from __future__ import annotations

import math
import warnings
from collections import OrderedDict
from concurrent.futures import ThreadPoolExecutor

import torch

from utils.data.decode import DataError, resize_uint8, rgb_to_grey

JPEG_MAGIC = b"\xff\xd8\xff"
DECODE_DEVICES = ("cpu", "device", "cuda")  # StreamingImages / load_split: where a streamed split is decoded
DECODE_CHOICES = ("cpu", "auto", "cuda", "device")  # load_splits (--decode_device): "auto" resolved by the run
DEVICE_CHUNK = 256  # images per decode_jpeg call (bounds the device memory of one call and its resize)
READ_THREADS = 8  # threads reading files' bytes
READ_CHUNK = 32  # files per read task
EOI_WITHIN = 64  # a JPEG for the device has its end-of-image marker within its last bytes

_readers: ThreadPoolExecutor | None = None


def check_decode_device(name: str) -> str:
    """``name`` when it is one of DECODE_DEVICES, else a ValueError."""
    if name not in DECODE_DEVICES:
        raise ValueError(f"unknown decode_device '{name}'; valid: {', '.join(DECODE_DEVICES)}")
    return name


def decode_on(name: str, device: torch.device) -> str:
    """The decode_device of a run's streamed splits (one of DECODE_DEVICES) for the choice ``name``
    (one of DECODE_CHOICES) on ``device``: "auto" decodes on the device when it is CUDA, else in the
    worker pool; "cuda" on a run that is not on CUDA is a DataError."""
    if name == "auto":
        return "cuda" if device.type == "cuda" else "cpu"
    if name == "cuda" and device.type != "cuda":
        raise DataError(f"--decode_device cuda decodes JPEGs on the run's GPU, but the run is on {device}; "
                        "use --device cuda, or --decode_device cpu or auto")
    if name not in DECODE_CHOICES:
        raise DataError(f"unknown decode device '{name}'; valid: {', '.join(DECODE_CHOICES)}")
    return name


# ----------------------------------------------------------------------------- reading
def readers() -> ThreadPoolExecutor:
    """The threads reading files' bytes, started on first use and shared by every split."""
    global _readers
    if _readers is None:
        _readers = ThreadPoolExecutor(READ_THREADS, thread_name_prefix="read_jpeg")
    return _readers


def read_chunks(keys: list[int]) -> list[list[int]]:
    """``keys`` cut into read tasks: at most READ_CHUNK each, at least one per reading thread."""
    size = max(1, min(READ_CHUNK, math.ceil(len(keys) / READ_THREADS)))
    return [keys[i:i + size] for i in range(0, len(keys), size)]


_SOF = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}  # start-of-frame markers (not DHT, JPG, DAC)
_NO_LENGTH = frozenset((0x01, *range(0xD0, 0xD9)))  # markers without a length field (TEM, RSTn, SOI)


def jpeg_components(data: bytes) -> int:
    """The number of colour components of a JPEG, from its frame header (0 when none is found in
    ``data``): 1 grey, 3 YCbCr or RGB, 4 CMYK or YCCK."""
    i, n = 2, len(data)
    while i + 9 < n and data[i] == 0xFF:
        marker = data[i + 1]
        if marker in _SOF:
            return data[i + 9]  # FF Cn, length (2), precision (1), height (2), width (2), components
        i += 1 if marker == 0xFF else 2 if marker in _NO_LENGTH else 2 + int.from_bytes(data[i + 2:i + 4], "big")
    return 0


def for_the_device(data: bytes) -> bool:
    """Whether the file ``data`` goes to decode_jpeg: a JPEG of 1 or 3 components (CMYK is not
    nvjpeg's) that ends with its end-of-image marker (within its last EOI_WITHIN bytes: a file cut
    short goes to the CPU decoder, which names it, where nvjpeg might decode what is there)."""
    return (data.startswith(JPEG_MAGIC) and data.rfind(b"\xff\xd9", max(0, len(data) - EOI_WITHIN)) >= 0
            and jpeg_components(data) in (1, 3))


def read_files(paths: list[str]) -> list[torch.Tensor | None]:
    """The bytes of each file for the device (see for_the_device), a CPU uint8 tensor; None for any
    other file, or one that is empty or cannot be read (the CPU decoder decodes it, or names it in
    its DataError)."""
    out: list[torch.Tensor | None] = []
    for p in paths:
        try:
            with open(p, "rb") as fh:
                data = fh.read()
        except OSError:
            data = b""
        out.append(torch.frombuffer(bytearray(data), dtype=torch.uint8) if for_the_device(data) else None)
    return out


# ----------------------------------------------------------------------------- decoding
def _decode_list(datas: list[torch.Tensor], device: torch.device) -> list[torch.Tensor | None]:
    """decode_jpeg over the whole list in one call (RGB, uint8 [3, H, W] each on ``device``); when
    that call fails (a corrupt file fails them all), each on its own, None where that fails too."""
    from torchvision.io import ImageReadMode, decode_jpeg
    with warnings.catch_warnings():  # torchvision 0.29 deprecates its decoders for TorchCodec's
        warnings.filterwarnings("ignore", "The image decoding", DeprecationWarning)
        try:
            return list(decode_jpeg(datas, mode=ImageReadMode.RGB, device=device))
        except Exception:  # noqa: BLE001 - decoders raise many types for broken files: find them below
            pass
        out: list[torch.Tensor | None] = []
        for d in datas:
            try:
                out.append(decode_jpeg(d, mode=ImageReadMode.RGB, device=device))
            except Exception:  # noqa: BLE001 - the CPU decoder names the file
                out.append(None)
        return out


def convert(x: torch.Tensor, mode: str, size: int | None) -> torch.Tensor:
    """Decoded RGB images uint8 [n, 3, H, W] as decode_file gives them: grey for mode "L" (integer
    luma, exact for grey sources), then resized to size x size when ``size`` is given and differs."""
    if mode == "L":
        x = rgb_to_grey(x)
    if size is not None and tuple(x.shape[-2:]) != (size, size):
        x = resize_uint8(x, size)
    return x


def _by_shape(images: list[torch.Tensor | None], hw: tuple[int, int] | None) -> tuple[list[list[int]], list[int]]:
    """Positions of the decoded ``images`` grouped by (H, W), and those left to the CPU decoder:
    failed, or (``hw`` given: a split without a size) of another size."""
    groups: dict[tuple[int, int], list[int]] = {}
    failed = []
    for i, x in enumerate(images):
        if x is None or (hw is not None and tuple(x.shape[1:]) != hw):
            failed.append(i)
        else:
            groups.setdefault(tuple(x.shape[1:]), []).append(i)
    return list(groups.values()), failed


def decode_jpegs(datas: list[torch.Tensor], mode: str, size: int | None, chw: tuple[int, int, int],
                 device: torch.device) -> tuple[torch.Tensor, list[int]]:
    """JPEGs (their bytes, CPU uint8 tensors) decoded by one decode_jpeg call into uint8
    [len(datas), *chw] on ``device``, converted and resized as decode_file does; and the positions
    it could not do (see _by_shape), whose rows are left zero for the CPU decoder."""
    images = _decode_list(datas, device)
    groups, failed = _by_shape(images, None if size is not None else tuple(chw[1:]))
    parts = [(pos, convert(torch.stack([images[i] for i in pos]), mode, size)) for pos in groups]
    del images
    if len(parts) == 1 and not failed:
        return parts[0][1], []
    out = torch.zeros((len(datas), *chw), dtype=torch.uint8, device=device)
    for pos, x in parts:
        out[torch.tensor(pos, device=device)] = x
    return out, failed


# ----------------------------------------------------------------------------- the cache
class SlabCache:
    """An LRU of decoded images held in one uint8 tensor [capacity, C, H, W] on a device (allocated
    on first insert): ``get`` is one gather and ``put`` one scatter, however many images."""

    def __init__(self, capacity: int, chw: tuple[int, int, int], device: torch.device) -> None:
        self.capacity = max(0, capacity)
        self.chw = tuple(chw)
        self.device = torch.device(device)
        self.slab: torch.Tensor | None = None
        self.slots: OrderedDict[int, int] = OrderedDict()  # key -> row of the slab, least recently used first
        self.free = list(range(self.capacity - 1, -1, -1))

    def __len__(self) -> int:
        return len(self.slots)

    def __contains__(self, key: int) -> bool:
        return key in self.slots

    def get(self, keys: list[int]) -> tuple[list[int], torch.Tensor | None]:
        """The positions in ``keys`` that are cached (marked used now) and their images, in that order."""
        pos, rows = [], []
        for j, k in enumerate(keys):
            r = self.slots.get(k)
            if r is not None:
                self.slots.move_to_end(k)
                pos.append(j)
                rows.append(r)
        if not pos:
            return pos, None
        return pos, self.slab[torch.tensor(rows, device=self.device)]

    def put(self, keys: list[int], images: torch.Tensor) -> None:
        """Cache images [len(keys), C, H, W] of distinct uncached ``keys`` (the last ``capacity`` of
        them), evicting the least recently used."""
        if not self.capacity or not keys:
            return
        keys, images = keys[-self.capacity:], images[-self.capacity:]
        if self.slab is None:
            self.slab = torch.empty((self.capacity, *self.chw), dtype=torch.uint8, device=self.device)
        rows = []
        for k in keys:
            r = self.free.pop() if self.free else self.slots.popitem(last=False)[1]
            self.slots[k] = r
            rows.append(r)
        self.slab[torch.tensor(rows, device=self.device)] = images
