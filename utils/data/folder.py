"""Image folders: decoded once into a cached uint8 tensor [N,C,H,W] that lives on the device, or,
when a split would not fit the data budget, streamed from disk (utils.streaming)."""
from __future__ import annotations

import hashlib
import io
import json
import logging
import math
import os
import sys
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from tqdm import tqdm

logger = logging.getLogger(__name__)

CACHE_VERSION = 1
IMAGE_EXTS = (".png", ".jpg", ".jpeg", ".bmp", ".ppm", ".pgm", ".tif", ".tiff", ".webp")
CPU_BUDGET_GB = 4.0  # default --data_budget_gb without a GPU
GPU_BUDGET_FRACTION = 0.5  # default --data_budget_gb on CUDA: this share of the free GPU memory

# mean, std, input size, model, classes. The public code uses MNIST's statistics for
# Fashion-MNIST as well; so do we.
STATS = {
    "mnist": ((0.1307,), (0.3081,), 28),
    "fashion_mnist": ((0.1307,), (0.3081,), 28),
    "cifar10": ((0.4914, 0.4822, 0.4465), (0.2023, 0.1994, 0.2010), 32),
    "cifar100": ((0.5071, 0.4867, 0.4408), (0.2675, 0.2565, 0.2761), 32),
    "imagenet": ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225), 224),
}


class DataError(Exception):
    """A dataset that is missing, empty, corrupt or inconsistent; the message says what to do."""


@dataclass
class ImageSet:
    """One split of an image folder: pixels, relative file names and folder classes.

    ``images`` is a uint8 tensor [N, C, H, W], or (a split over the data budget) a
    utils.streaming.StreamingImages with the same indexing interface. ``mean``/``std`` are the
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


def read_ahead(images, chunks: list[torch.Tensor]) -> None:
    """Tell a streamed split which index batches come next, in order, so that their decoding
    starts early (utils.streaming); a no-op for an in-memory uint8 tensor."""
    plan = getattr(images, "plan", None)
    if plan is not None:
        plan(chunks)


def dataset_missing_message(root: Path, name: str) -> str:
    hint = ""
    if name in ("mnist", "fashion_mnist", "cifar10", "cifar100"):  # utils.prepare's datasets
        hint = f" Prepare it with: python -m utils.prepare --dataset {name}"
    return (f"dataset folder {root} not found (expected {root}/train/<class>/<image> and "
            f"{root}/test/<class>/<image>).{hint}")


def list_split(root: Path, split: str) -> tuple[list[str], list[str]]:
    """Sorted class folders and relative image paths of one split; errors name the problem."""
    split_dir = root / split
    if not split_dir.is_dir():
        raise DataError(f"missing split folder {split_dir}")
    classes = sorted(d.name for d in os.scandir(split_dir) if d.is_dir() and not d.name.startswith("."))
    if not classes:
        raise DataError(f"{split_dir} has no class folders")
    files: list[str] = []
    for c in classes:
        names = sorted(e.name for e in os.scandir(split_dir / c)
                       if e.is_file() and e.name.lower().endswith(IMAGE_EXTS))
        if not names:
            raise DataError(f"class folder {split_dir / c} holds no images")
        files += [f"{split}/{c}/{n}" for n in names]
    return classes, files


def fingerprint(root: Path, files: list[str]) -> str:
    """Changes whenever an image is added, removed, resized or touched. Every file must exist
    and be non-empty."""
    h = hashlib.sha1()
    for f in files:
        try:
            st = os.stat(root / f)
        except OSError as e:
            raise DataError(f"cannot read image {root / f}: {e.strerror or e}; re-create it or remove it") from None
        if st.st_size == 0:
            raise DataError(f"image file {root / f} is empty; re-create it (re-run utils.prepare) or remove it")
        h.update(f"{f}:{st.st_size}:{st.st_mtime_ns};".encode())
    return h.hexdigest()


# ----------------------------------------------------------------------------- decoding
# One decoder for both paths (in-memory and streaming), so both give the same bytes:
# torchvision.io.decode_image for PNG/JPEG/GIF/WebP (as RGB; grey = PIL's integer luma of it,
# which is exact for grey sources), PIL for the other formats; resizing to N x N with
# torchvision's bilinear antialiased uint8 resize.
_TV_MAGIC = (b"\x89PNG\r\n\x1a\n", b"\xff\xd8\xff", b"GIF87a", b"GIF89a")


def _torchvision_format(data: bytes) -> bool:
    return data.startswith(_TV_MAGIC) or (data[:4] == b"RIFF" and data[8:12] == b"WEBP")


def rgb_to_grey(x: torch.Tensor) -> torch.Tensor:
    """uint8 [3,H,W] -> [1,H,W] with PIL's convert('L') integer formula (ITU-R 601-2 luma)."""
    r, g, b = x.to(torch.int32).unbind(0)
    return ((r * 19595 + g * 38470 + b * 7471 + 0x8000) >> 16).to(torch.uint8)[None]


def resize_uint8(x: torch.Tensor, size: int) -> torch.Tensor:
    """uint8 [C,H,W] -> [C,size,size]: bilinear with antialiasing (torchvision v2 on uint8)."""
    from torchvision.transforms.v2 import InterpolationMode
    from torchvision.transforms.v2 import functional as TF
    return TF.resize(x, [size, size], interpolation=InterpolationMode.BILINEAR, antialias=True)


def _decode_bytes(data: bytes, mode: str) -> torch.Tensor:
    if _torchvision_format(data):
        from torchvision.io import ImageReadMode, decode_image
        # a grey PNG (IHDR colour type 0 or 4) read as grey: the same pixels, without the RGB detour
        grey_png = mode == "L" and data[:4] == b"\x89PNG" and len(data) > 25 and data[25] in (0, 4)
        with warnings.catch_warnings():  # torchvision 0.29 deprecates its decoders for TorchCodec's
            warnings.filterwarnings("ignore", "The image decoding", DeprecationWarning)
            x = decode_image(torch.frombuffer(bytearray(data), dtype=torch.uint8),
                             mode=ImageReadMode.GRAY if grey_png else ImageReadMode.RGB)
        if x.ndim == 4:  # animated GIF: first frame
            x = x[0]
        if x.dtype != torch.uint8:  # 16-bit PNG
            x = ((x.to(torch.int32) * 255 + 32767) // 65535).to(torch.uint8)
        if mode == "RGB" or x.shape[0] == 1:
            return x.contiguous()
        if torch.equal(x[0], x[1]) and torch.equal(x[1], x[2]):  # a grey source: its luma is itself
            return x[:1].contiguous()
        return rgb_to_grey(x)
    with Image.open(io.BytesIO(data)) as im:
        arr = np.array(im.convert(mode), dtype=np.uint8)  # a writable copy
    arr = arr[None] if arr.ndim == 2 else arr.transpose(2, 0, 1)
    return torch.from_numpy(np.ascontiguousarray(arr))


def decode_file(path: Path, mode: str, size: int | None = None) -> torch.Tensor:
    """One image as uint8 [C,H,W] (C = 1 for mode 'L', 3 for 'RGB'), resized to size x size
    when ``size`` is given and differs; any failure is a DataError naming the file."""
    try:
        data = Path(path).read_bytes()
    except OSError as e:
        raise DataError(f"cannot read image {path}: {e.strerror or e}; re-create it or remove it") from None
    if not data:
        raise DataError(f"image file {path} is empty; re-create it (re-run utils.prepare) or remove it")
    try:
        x = _decode_bytes(data, mode)
    except Exception as e:  # decoders raise many types for broken files
        raise DataError(f"cannot read image {path}: {e.__class__.__name__}: {e}. "
                        "Re-create it (re-run utils.prepare) or remove it.") from None
    if size is not None and tuple(x.shape[1:]) != (size, size):
        x = resize_uint8(x, size)
    return x


def probe(path: Path) -> tuple[str, tuple[int, int]]:
    """Decoding mode ('L' or 'RGB') and (width, height) of a split's first image (header only)."""
    try:
        with Image.open(path) as im0:
            mode = "L" if im0.mode in ("L", "1", "I", "I;16", "LA") else "RGB"
            return mode, im0.size
    except Exception as e:
        raise DataError(f"cannot read image {path}: {e.__class__.__name__}: {e}. "
                        "Re-create it (re-run utils.prepare) or remove it.") from None


def target_size(first_size: tuple[int, int], size: int | None) -> int | None:
    """The side images are resized to: --input_size, else none (native), except that a
    non-square first image makes the split square at its longer side."""
    if size is not None:
        return size
    return None if first_size[0] == first_size[1] else max(first_size)


def size_mismatch_error(root: Path, split: str, files: list[str], shapes: list[tuple[int, int]]) -> DataError | None:
    """The error for images of different (H, W) without --input_size, or None when all agree."""
    if len(set(shapes)) <= 1:
        return None
    common = max(set(shapes), key=shapes.count)
    odd = [(f, s) for f, s in zip(files, shapes) if s != common]
    more = f" (and {len(odd) - 1} more)" if len(odd) > 1 else ""
    return DataError(f"images of different sizes in {root / split}: most are {common[1]}x{common[0]}, but image "
                     f"{root / odd[0][0]} is {odd[0][1][1]}x{odd[0][1][0]}{more}; resize them to one size, "
                     f"remove them, or give --input_size N to resize every image to N x N")


def folder_labels(files: list[str], classes: list[str]) -> torch.Tensor:
    cls_idx = {c: i for i, c in enumerate(classes)}
    return torch.tensor([cls_idx[f.split("/")[1]] for f in files], dtype=torch.long)


PARALLEL_DECODE_MIN = 4096  # splits with this many images decode in the worker pool


def decode_split(root: Path, split: str, size: int | None = None, n_workers: int = 0) -> ImageSet:
    """Decode every image of ``root/split`` (no cache): in this process, or for splits of
    PARALLEL_DECODE_MIN images or more in the streaming path's worker pool (``n_workers``
    processes, 0: automatic); the same bytes either way."""
    classes, files = list_split(root, split)
    mode, first_size = probe(root / files[0])
    size = target_size(first_size, size)
    first = decode_file(root / files[0], mode, size)
    out = torch.empty((len(files), *first.shape), dtype=torch.uint8)
    from utils.streaming import decode_into, pool_size
    if len(files) >= PARALLEL_DECODE_MIN and pool_size(n_workers) > 1:
        shapes = decode_into(out, root, files, mode, size, n_workers, desc=f"decode {root.name}/{split}")
    else:
        quiet = not sys.stderr.isatty()
        shapes = []
        for i, f in enumerate(tqdm(files, desc=f"decode {root.name}/{split}", disable=quiet, leave=False)):
            x = first if i == 0 else decode_file(root / f, mode, size)
            shapes.append(tuple(x.shape[1:]))
            if x.shape == out.shape[1:]:
                out[i] = x
    err = size_mismatch_error(root, split, files, shapes)
    if err is not None:
        raise err
    return ImageSet(out, files, classes, folder_labels(files, classes))


# ----------------------------------------------------------------------------- statistics
def pixel_sums(x: torch.Tensor) -> tuple[list[int], list[int]]:
    """Exact per-channel sums of the pixel values and of their squares of uint8 [n,C,H,W]."""
    s1 = [0] * x.shape[1]
    s2 = [0] * x.shape[1]
    step = max(1, (1 << 24) // max(1, math.prod(x.shape[1:])))
    for s in range(0, len(x), step):
        v = x[s:s + step].to(torch.int64)
        for c, (a, b) in enumerate(zip(v.sum((0, 2, 3)).tolist(), (v * v).sum((0, 2, 3)).tolist())):
            s1[c] += a
            s2[c] += b
    return s1, s2


def mean_std(s1: list[int], s2: list[int], n: int) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean and (unbiased) std on the 0-1 scale from exact integer sums over ``n``
    pixels per channel: the same numbers however the sums were gathered. A constant channel
    gets std 1 (nothing to normalise)."""
    mean = tuple(a / n / 255 for a in s1)
    std = []
    for a, b in zip(s1, s2):
        var = (n * b - a * a) / (n * max(n - 1, 1)) / 255 ** 2  # integer numerator: exact
        std.append(math.sqrt(var) if var > 0 else 1.0)
    return mean, tuple(std)


# ----------------------------------------------------------------------------- caches
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


def fmt_floats(v) -> str:
    return "(" + ", ".join(f"{x:.4f}" for x in v) + ")"


def default_budget_bytes(device: torch.device, budget_gb: float | None) -> tuple[int, str]:
    """--data_budget_gb in bytes, and where the number came from."""
    if budget_gb is not None:
        return int(budget_gb * 1e9), "--data_budget_gb"
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return int(free * GPU_BUDGET_FRACTION), f"{GPU_BUDGET_FRACTION:.0%} of the free GPU memory"
    return int(CPU_BUDGET_GB * 1e9), "CPU default"


def _load_in_memory(root: Path, split: str, size: int | None, use_cache: bool, files: list[str],
                    fp: str, n_workers: int = 0) -> ImageSet:
    cache = root / ".cache" / f"{_cache_name(split, size)}.pt"
    if use_cache and cache.is_file():
        try:
            blob = torch.load(cache, weights_only=False)
            if blob.get("fingerprint") == fp:
                return ImageSet(blob["images"], blob["files"], blob["classes"], blob["folder_label"])
            logger.info("image folder %s/%s changed: rebuilding the decoded cache", root, split)
        except Exception as e:  # unreadable cache: rebuild it
            logger.warning("ignoring unreadable cache %s (%s)", cache, e)
    s = decode_split(root, split, size, n_workers)
    if use_cache:
        try:
            cache.parent.mkdir(exist_ok=True)
            tmp = cache.with_suffix(f".tmp{os.getpid()}")
            torch.save({"fingerprint": fp, "images": s.images, "files": s.files,
                        "classes": s.classes, "folder_label": s.folder_label}, tmp)
            os.replace(tmp, cache)
        except OSError as e:
            logger.warning("could not write the decoded cache %s (%s)", cache, e)
    return s


def load_split(root: Path, split: str, size: int | None = None, use_cache: bool = True, budget: int | None = None,
               derive_stats: bool = False, n_workers: int = 0) -> ImageSet:
    """One split of an image folder. Its decoded size N*C*H*W is known from the first image's
    header (and ``size``, the --input_size). Within ``budget`` bytes (None: no limit) it is decoded
    once into a uint8 tensor and cached under ``root/.cache`` (rebuilt when files change); over
    the budget, its images are a StreamingImages decoding batches on demand in ``n_workers``
    processes (0: automatic). ``derive_stats``: also the per-channel mean/std of the images,
    cached next to the decoded cache with the same fingerprint."""
    classes, files = list_split(root, split)
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
        from utils.streaming import StreamingImages, pool_size, scan_split
        need_stats = derive_stats and not (meta and meta.get("mean"))
        need_sizes = target is None and not (meta and meta.get("shape"))
        if need_stats or need_sizes:
            meta = {"fingerprint": fp, "shape": list(shape[1:]),
                    **scan_split(root, split, files, mode, target, need_stats, n_workers)}
            if use_cache:
                write_meta(meta_path, meta)
        images = StreamingImages(root, files, mode, target, shape, n_workers)
        s = ImageSet(images, files, classes, folder_labels(files, classes))
        s.info = (f"{split}: {dims} > budget {fmt_bytes(budget)}: streamed from disk, decoded in "
                  f"{pool_size(n_workers)} worker processes")
    if derive_stats:
        s.mean, s.std = tuple(meta["mean"]), tuple(meta["std"])
    return s


def resolve_device(name: str) -> torch.device:
    """auto -> cuda when available else cpu; cuda without a GPU is an error."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise DataError("--device cuda was asked for but no CUDA GPU is available; use --device cpu or auto")
    if name not in ("cpu", "cuda"):
        raise DataError(f"unknown device '{name}'; valid: auto, cpu, cuda")
    return torch.device(name)


@dataclass
class RunData:
    """Everything a method needs to know about the data of one run (tensors on the device)."""

    train: ImageSet
    test: ImageSet
    train_labels: torch.Tensor  # run label per training image (-1: in no task)
    test_labels: torch.Tensor
    mean: tuple[float, ...]
    std: tuple[float, ...]
    n_classes: int
    task_classes: list[list[int]]
    info: str = ""  # how the data was loaded (logged once per run)
