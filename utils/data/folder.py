"""Image folders: each split decoded once into a cached uint8 tensor [N,C,H,W], or, when it would
not fit the data budget, streamed from disk (utils.data.streaming) behind the same interface."""
from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path

import torch
from tqdm import tqdm

from utils.data.decode import IMAGE_EXTS, ConversionLog, DataError, probe, read_image, size_mismatch_error, target_size
from utils.data.decode_pool import decode_into, pool_size, scan_split
from utils.data.device_decode import check_decode_device
from utils.data.stats import mean_std, pixel_sums
from utils.data.streaming import StreamingImages

logger = logging.getLogger(__name__)

CACHE_VERSION = 3  # 2: the cache records the conversions applied while decoding; 3: no file list (the
# fingerprint covers the names, and unpickling 70,000 strings with weights_only cost 0.4 s per split)


@dataclass
class ImageSet:
    """One split of an image folder: pixels, relative file names and folder classes.

    ``images`` is a uint8 tensor [N, C, H, W], or (a split over the data budget) a
    utils.data.streaming.StreamingImages with the same indexing interface. ``mean``/``std`` are the
    per-channel statistics derived from the images when they were asked for (load_split
    derive_stats); ``info`` says how the split was loaded."""

    images: torch.Tensor  # uint8 [N, C, H, W] (or StreamingImages)
    files: list[str]  # "train/<class>/<file>"
    classes: list[str]  # sorted class folder names
    folder_label: torch.Tensor  # long [N], index into classes
    index: dict[str, int] = field(default_factory=dict)
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None
    info: str = ""
    conversions: dict[str, list] = field(default_factory=dict)  # ConversionLog.as_dict() of the split
    skipped: list[str] = field(default_factory=list)  # hidden files (".name") left out of the split

    def __post_init__(self) -> None:
        if not self.index:
            self.index = {f: i for i, f in enumerate(self.files)}

    def __len__(self) -> int:
        return len(self.files)

    @property
    def streaming(self) -> bool:
        return not isinstance(self.images, torch.Tensor)

    @property
    def nbytes(self) -> int:
        """Bytes of the decoded pixels (what an in-memory split holds)."""
        return math.prod(self.images.shape)

    def to(self, device: torch.device) -> "ImageSet":
        self.images = self.images.to(device)
        self.folder_label = self.folder_label.to(device)
        return self

    def class_files(self) -> dict[str, list[str]]:
        out: dict[str, list[str]] = {c: [] for c in self.classes}
        for f in self.files:
            out[f.split("/")[1]].append(f)
        return out


def read_ahead(images: torch.Tensor, chunks: list[torch.Tensor]) -> None:
    """Tell a streamed split which index batches come next, in order, so that their decoding
    starts early (utils.data.streaming); a no-op for an in-memory uint8 tensor."""
    plan = getattr(images, "plan", None)
    if plan is not None:
        plan(chunks)



def list_split(root: Path, split: str) -> tuple[list[str], list[str], list[str]]:
    """Sorted class folders, relative image paths and the hidden entries (".name", left out) of one
    split. Anything else that is not an image where an image belongs is refused, named: a file
    beside the class folders, a folder or a broken link inside one, a file of another type."""
    split_dir = root / split
    if not split_dir.is_dir():
        raise DataError(f"missing split folder {split_dir}")
    classes, hidden = [], []
    for e in sorted(os.scandir(split_dir), key=lambda e: e.name):
        if e.name.startswith("."):
            hidden.append(f"{split}/{e.name}")
        elif e.is_dir():
            classes.append(e.name)
        else:
            raise DataError(f"{split_dir / e.name} is not a class folder: a split folder holds one folder per "
                            f"class; move it out of {split_dir}")
    if not classes:
        raise DataError(f"{split_dir} has no class folders")
    files: list[str] = []
    for c in classes:
        names = []
        for e in sorted(os.scandir(split_dir / c), key=lambda e: e.name):
            if e.name.startswith("."):
                hidden.append(f"{split}/{c}/{e.name}")
            elif e.is_symlink() and not os.path.exists(e.path):
                raise DataError(f"{e.path} is a broken symbolic link (to {os.readlink(e.path)}); fix it or remove it")
            elif e.is_dir():
                raise DataError(f"{e.path} is a folder where an image is expected; class folders hold images only, "
                                f"move it out")
            elif not e.name.lower().endswith(IMAGE_EXTS):
                raise DataError(f"{e.path} is not an image (images end in {', '.join(IMAGE_EXTS)}); move it out of "
                                f"the class folder")
            else:
                names.append(e.name)
        if not names:
            raise DataError(f"class folder {split_dir / c} holds no images")
        files += [f"{split}/{c}/{n}" for n in names]
    return classes, files, hidden


def fingerprint(root: Path, files: list[str]) -> str:
    """Changes whenever an image is added, removed, resized or touched. Every file must exist
    and be non-empty."""
    h = hashlib.sha1()
    base = os.fspath(root)
    for f in files:  # plain strings, not Path objects: 70,000 MNIST files in 0.3 s instead of 2 s
        try:
            st = os.stat(os.path.join(base, f))
        except OSError as e:
            raise DataError(f"cannot read image {root / f}: {e.strerror or e}; re-create it or remove it") from None
        if st.st_size == 0:
            raise DataError(f"image file {root / f} is empty; re-create it (re-run utils.prepare) or remove it")
        h.update(f"{f}:{st.st_size}:{st.st_mtime_ns};".encode())
    return h.hexdigest()



def folder_labels(files: list[str], classes: list[str]) -> torch.Tensor:
    cls_idx = {c: i for i, c in enumerate(classes)}
    return torch.tensor([cls_idx[f.split("/")[1]] for f in files], dtype=torch.long)


PARALLEL_DECODE_MIN = 4096  # splits with this many images decode in the worker pool


def decode_split(root: Path, split: str, size: int | None = None, n_workers: int = 0) -> ImageSet:
    """Decode every image of ``root/split`` (no cache): in this process, or for splits of
    PARALLEL_DECODE_MIN images or more in the streaming path's worker pool (``n_workers``
    processes, 0: automatic); the same bytes and the same conversions either way."""
    classes, files, hidden = list_split(root, split)
    mode, first_size = probe(root / files[0])
    size = target_size(first_size, size)
    first, kinds = read_image(root / files[0], mode, size)
    out = torch.empty((len(files), *first.shape), dtype=torch.uint8)
    log = ConversionLog()
    if len(files) >= PARALLEL_DECODE_MIN and pool_size(n_workers) > 1:
        shapes = decode_into(out, root, files, mode, size, n_workers, desc=f"decode {root.name}/{split}", log=log)
    else:
        quiet = not sys.stderr.isatty()
        shapes = []
        for i, f in enumerate(tqdm(files, desc=f"decode {root.name}/{split}", disable=quiet, leave=False)):
            x, kinds = (first, kinds) if i == 0 else read_image(root / f, mode, size)
            log.add(kinds, f)
            shapes.append(tuple(x.shape[1:]))
            if x.shape == out.shape[1:]:
                out[i] = x
    err = size_mismatch_error(root, split, files, shapes)
    if err is not None:
        raise err
    return ImageSet(out, files, classes, folder_labels(files, classes), conversions=log.as_dict(), skipped=hidden)


def _cache_name(split: str, size: int | None) -> str:
    return f"{split}-v{CACHE_VERSION}-{size or 'native'}"


def read_meta(path: Path, fp: str) -> dict | None:
    """The cached facts of a split (shape, derived statistics), when they are for these files."""
    try:
        meta = json.loads(path.read_text())
        return meta if meta.get("fingerprint") == fp else None
    except (OSError, ValueError, AttributeError):
        return None


def write_meta(path: Path, meta: dict) -> None:
    try:
        path.parent.mkdir(exist_ok=True)
        tmp = path.with_suffix(f".tmp{os.getpid()}")
        tmp.write_text(json.dumps(meta, indent=1))
        os.replace(tmp, path)
    except OSError as e:
        logger.warning("could not write %s (%s)", path, e)



def fmt_bytes(n: float) -> str:
    for unit, f in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if n >= f:
            return f"{n / f:.2f} {unit}"
    return f"{int(n)} B"



def _load_in_memory(root: Path, split: str, size: int | None, use_cache: bool, files: list[str],
                    fp: str, n_workers: int = 0) -> ImageSet:
    cache = root / ".cache" / f"{_cache_name(split, size)}.pt"
    if use_cache and cache.is_file():
        try:
            blob = torch.load(cache, weights_only=True)
            if blob.get("fingerprint") == fp:
                return ImageSet(blob["images"], files, blob["classes"], blob["folder_label"],
                                conversions=blob["conversions"])
            logger.info("image folder %s/%s changed: rebuilding the decoded cache", root, split)
        except Exception as e:  # unreadable cache: rebuild it
            logger.warning("ignoring unreadable cache %s (%s)", cache, e)
    s = decode_split(root, split, size, n_workers)
    if use_cache:
        try:
            cache.parent.mkdir(exist_ok=True)
            tmp = cache.with_suffix(f".tmp{os.getpid()}")
            torch.save({"fingerprint": fp, "images": s.images, "classes": s.classes,
                        "folder_label": s.folder_label, "conversions": s.conversions}, tmp)
            os.replace(tmp, cache)
        except OSError as e:
            logger.warning("could not write the decoded cache %s (%s)", cache, e)
    return s


def load_split(root: Path, split: str, size: int | None = None, use_cache: bool = True, budget: int | None = None,
               derive_stats: bool = False, n_workers: int = 0, decode_device: str = "cpu") -> ImageSet:
    """One split of an image folder. Its decoded size N*C*H*W is known from the first image's
    header (and ``size``, the --input_size). Within ``budget`` bytes (None: no limit) it is decoded
    once into a uint8 tensor and cached under ``root/.cache`` (rebuilt when files change); over
    the budget, its images are a StreamingImages decoding batches on demand in ``n_workers``
    processes (0: automatic), or with ``decode_device`` "device" or "cuda" on the device the split is
    bound to (JPEGs, batched; utils.data.streaming; "cpu": the processes; no effect in memory).
    ``derive_stats``: also the per-channel mean/std of the images, cached next to the decoded cache
    with the same fingerprint."""
    check_decode_device(decode_device)
    classes, files, hidden = list_split(root, split)
    fp = fingerprint(root, files)
    mode, first_size = probe(root / files[0])
    target = target_size(first_size, size)
    side = target or first_size[0]
    shape = (len(files), 1 if mode == "L" else 3, side, side)
    nbytes = math.prod(shape)
    meta_path = root / ".cache" / f"{_cache_name(split, size)}.meta.json"
    meta = read_meta(meta_path, fp) if use_cache else None
    dims = f"{len(files)} images {shape[1]}x{side}x{side} = {fmt_bytes(nbytes)}"
    if budget is None or nbytes <= budget:
        s = _load_in_memory(root, split, size, use_cache, files, fp, n_workers)
        how = "in memory" + ("" if budget is None else f" (within the budget of {fmt_bytes(budget)})")
        if derive_stats and not (meta and meta.get("mean")):
            n = len(s) * s.images.shape[2] * s.images.shape[3]
            mean, std = mean_std(*pixel_sums(s.images), n)
            meta = {"fingerprint": fp, "shape": list(s.images.shape[1:]), "mean": mean, "std": std}
            if use_cache:
                write_meta(meta_path, meta)
        s.info = f"{split}: {dims}, {how}"
    else:
        need_stats = derive_stats and not (meta and meta.get("mean"))
        if not (meta and "conversions" in meta) or need_stats:  # one pass over the headers (or the pixels)
            meta = {"fingerprint": fp, "shape": list(shape[1:]),
                    **scan_split(root, split, files, mode, target, need_stats, n_workers)}
            if use_cache:
                write_meta(meta_path, meta)
        images = StreamingImages(root, files, mode, target, shape, n_workers, decode_device=decode_device)
        s = ImageSet(images, files, classes, folder_labels(files, classes), conversions=meta["conversions"])
        where = (f"{pool_size(n_workers)} worker processes" if decode_device == "cpu" else
                 f"batches on the device (JPEGs; other formats in {pool_size(n_workers)} worker processes)")
        s.info = f"{split}: {dims} > budget {fmt_bytes(budget)}: streamed from disk, decoded in {where}"
    s.skipped = hidden
    if s.conversions:
        s.info += f"; converted while decoding: {ConversionLog(s.conversions)}"
    if hidden:
        s.info += f"; left out {len(hidden)} hidden entr{'y' if len(hidden) == 1 else 'ies'} ({', '.join(hidden[:3])})"
    if derive_stats:
        s.mean, s.std = tuple(meta["mean"]), tuple(meta["std"])
    return s
