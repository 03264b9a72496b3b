"""Decoding one image file into a uint8 [C,H,W] tensor (the leaf of the data path), and the error type."""
from __future__ import annotations

import io
import warnings
from pathlib import Path

import numpy as np
import torch
from PIL import Image

IMAGE_EXTS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".ppm", ".pgm", ".tif", ".tiff", ".webp")


class DataError(Exception):
    """A dataset that is missing, empty, corrupt or inconsistent; the message says what to do."""


# One decoder for both paths (in-memory and streaming), so both give the same bytes:
# torchvision.io.decode_image for PNG/JPEG/GIF/WebP (as RGB; grey = PIL's integer luma of it,
# which is exact for grey sources), PIL for the other formats; resizing to N x N with
# torchvision's bilinear antialiased uint8 resize.
_TV_MAGIC = (b"\x89PNG\r\n\x1a\n", b"\xff\xd8\xff", b"GIF87a", b"GIF89a")


def _torchvision_format(data: bytes) -> bool:
    return data.startswith(_TV_MAGIC) or (data[:4] == b"RIFF" and data[8:12] == b"WEBP")


def rgb_to_grey(x: torch.Tensor) -> torch.Tensor:
    """uint8 [..., 3, H, W] -> [..., 1, H, W] with PIL's convert('L') integer formula (ITU-R 601-2
    luma); a batch [N, 3, H, W] at once (the device decoder), on any device."""
    r, g, b = x.to(torch.int32).unbind(-3)
    return ((r * 19595 + g * 38470 + b * 7471 + 0x8000) >> 16).to(torch.uint8).unsqueeze(-3)


def resize_uint8(x: torch.Tensor, size: int) -> torch.Tensor:
    """uint8 [..., C, H, W] -> [..., C, size, size]: bilinear with antialiasing (torchvision v2 on uint8)."""
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


# ----------------------------------------------------------------------------- conversions
# What decoding does to a file stored unlike the split's images (mode of its first image): each
# kind is counted and reported (ImageSet.conversions), never applied silently.
CONVERSIONS = {
    "to_grey": "colour converted to grey (ITU-R 601-2 luma)",
    "to_colour": "grey repeated on 3 channels",
    "alpha": "alpha channel dropped",
    "palette": "palette expanded",
    "16bit": "16-bit samples scaled to 8 bits",
    "frames": "first frame of an animation kept",
}
_PNG_MODES = {0: "L", 2: "RGB", 3: "P", 4: "LA", 6: "RGBA"}
_GREY = ("1", "L", "LA", "I", "I;16", "I;16B", "I;16L", "La")


def _source(data: bytes) -> tuple[str, bool, bool]:
    """(PIL-style mode, 16-bit samples, several frames) of an encoded image, from its header."""
    if data.startswith(b"\x89PNG") and len(data) > 25:
        idat = data.find(b"IDAT")
        return _PNG_MODES.get(data[25], "?"), data[24] == 16, b"acTL" in data[:idat if idat > 0 else 4096]
    with Image.open(io.BytesIO(data)) as im:
        try:
            frames = getattr(im, "n_frames", 1) > 1
        except Exception:  # noqa: BLE001 - a header read from a file's first bytes may end early
            frames = False
        return im.mode, im.mode.startswith("I;16"), frames


def conversions(data: bytes, mode: str) -> tuple[str, ...]:
    """The CONVERSIONS kinds that decoding ``data`` into ``mode`` ('L' or 'RGB') applies."""
    src, sixteen, frames = _source(data)
    kinds = []
    if mode == "L" and src not in _GREY:
        kinds.append("to_grey")
    if mode == "RGB" and src in _GREY:
        kinds.append("to_colour")
    if src in ("LA", "RGBA", "PA", "La", "RGBa"):
        kinds.append("alpha")
    if src == "P":
        kinds.append("palette")
    if sixteen:
        kinds.append("16bit")
    if frames:
        kinds.append("frames")
    return tuple(kinds)


class ConversionLog:
    """Files converted while decoding, by kind: a count and the first few file names."""

    EXAMPLES = 3

    def __init__(self, counts: dict[str, list] | None = None) -> None:
        self.counts: dict[str, list] = {k: [n, list(ex)] for k, (n, ex) in (counts or {}).items()}

    def add(self, kinds: tuple[str, ...], file: str) -> None:
        for k in kinds:
            n, ex = self.counts.setdefault(k, [0, []])
            self.counts[k][0] = n + 1
            if len(ex) < self.EXAMPLES:
                ex.append(file)

    def merge(self, other: "ConversionLog") -> None:
        for k, (n, ex) in other.counts.items():
            mine = self.counts.setdefault(k, [0, []])
            mine[0] += n
            mine[1] = (mine[1] + ex)[:self.EXAMPLES]

    def as_dict(self) -> dict[str, list]:
        return {k: [n, list(ex)] for k, (n, ex) in self.counts.items()}

    def __bool__(self) -> bool:
        return bool(self.counts)

    def __str__(self) -> str:
        return "; ".join(f"{n} {CONVERSIONS[k]} (e.g. {', '.join(ex)})" for k, (n, ex) in sorted(self.counts.items()))


# ----------------------------------------------------------------------------- files
def read_image(path: Path, mode: str, size: int | None = None) -> tuple[torch.Tensor, tuple[str, ...]]:
    """One image as uint8 [C,H,W] (C = 1 for mode 'L', 3 for 'RGB'), resized to size x size
    when ``size`` is given and differs, and the conversions decoding applied to it; any failure is
    a DataError naming the file."""
    try:
        data = Path(path).read_bytes()
    except OSError as e:
        raise DataError(f"cannot read image {path}: {e.strerror or e}; re-create it or remove it") from None
    if not data:
        raise DataError(f"image file {path} is empty; re-create it (re-run utils.prepare) or remove it")
    try:
        kinds = conversions(data, mode)
        x = _decode_bytes(data, mode)
    except Exception as e:  # decoders raise many types for broken files
        raise DataError(f"cannot read image {path}: {e.__class__.__name__}: {e}. "
                        "Re-create it (re-run utils.prepare) or remove it.") from None
    if size is not None and tuple(x.shape[1:]) != (size, size):
        x = resize_uint8(x, size)
    return x, kinds


def decode_file(path: Path, mode: str, size: int | None = None) -> torch.Tensor:
    """read_image without the conversions."""
    return read_image(path, mode, size)[0]


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
