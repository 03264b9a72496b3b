"""Batched per-sample-random uint8 augmentations reproducing the PIL-based Rainbow Memory pipeline."""
from __future__ import annotations

import math
from typing import Callable, Iterator, Optional, Sequence, Union

import torch
import torch.nn.functional as F
from torch import Tensor

Mag = Union[Tensor, float, int]

# ----------------------------------------------------------------------------- helpers


def _param(m: Mag, x: Tensor, dtype: torch.dtype) -> Tensor:
    """Per-sample parameter as a [B] tensor of `dtype` on x.device (python scalars broadcast)."""
    t = torch.as_tensor(m, device=x.device).to(dtype)
    return t.expand(x.shape[0]) if t.ndim == 0 else t


def _b4(t: Tensor) -> Tensor:
    return t.view(-1, 1, 1, 1)


def _blend(degenerate: Tensor, x: Tensor, factor: Mag) -> Tensor:
    """PIL Image.blend(degenerate, x, factor): float32 deg + f*(x-deg), clipped, truncated to uint8."""
    f = _b4(_param(factor, x, torch.float64).float())
    return x.float().sub_(degenerate).mul_(f).add_(degenerate).clamp_(0, 255).to(torch.uint8)


def _gray(x: Tensor) -> Tensor:
    """PIL convert('L') of RGB as int32 [B,1,H,W]: (19595 R + 38470 G + 7471 B + 2**15) >> 16."""
    r, g, b = x.int().unbind(1)
    return ((r * 19595 + g * 38470 + b * 7471 + 32768) >> 16).unsqueeze(1)


def _with_fill(x: Tensor, fill: float, dim: int) -> Tensor:
    """x with one extra slot holding `fill` appended along `dim` (index == size reads the fill value)."""
    shape = list(x.shape)
    shape[dim] = 1
    return torch.cat([x, x.new_full(shape, fill)], dim)


def _gather_nearest(x: Tensor, iy: Tensor, ix: Tensor, fill: float) -> Tensor:
    """out[b,:,i,j] = x[b,:,iy,ix] for integer maps iy/ix [B,H,W]; out-of-range sources get `fill`."""
    B, C, H, W = x.shape
    valid = (ix >= 0) & (ix < W) & (iy >= 0) & (iy < H)
    flat = torch.where(valid, iy * W + ix, H * W).long().view(B, 1, H * W).expand(B, C, H * W)
    return _with_fill(x.reshape(B, C, H * W), fill, 2).gather(2, flat).view(B, C, H, W)


def _shift_along_w(x: Tensor, ix: Tensor, fill: float) -> Tensor:
    """out[b,:,:,j] = x[b,:,:,ix[b,j]] for ix [B,W]; indices outside [0,W) read `fill`."""
    B, C, H, W = x.shape
    idx = torch.where((ix >= 0) & (ix < W), ix, W).view(B, 1, 1, W).expand(B, C, H, W)
    return _with_fill(x, fill, 3).gather(3, idx)


def _apply_lut(x: Tensor, lut: Tensor) -> Tensor:
    """Per image-and-channel lookup table lut [B*C, 256] applied to x."""
    B, C, H, W = x.shape
    return lut.to(torch.uint8).gather(1, x.reshape(B * C, H * W).long()).view(B, C, H, W)


def _centres(n: int, x: Tensor) -> Tensor:
    """PIL samples output pixel p at its centre p + 0.5 (float64)."""
    return torch.arange(n, device=x.device, dtype=torch.float64) + 0.5


def _cubic_along_w(x: Tensor, u: Tensor, fill: float) -> Tensor:
    """PIL BICUBIC (a=-1 cubic, edge clamp, truncation) along W at source coords u [B,H,W]; u outside [0,W) -> fill."""
    B, C, H, W = x.shape
    t = u - 0.5
    i0 = torch.floor(t)
    d = t.sub_(i0).unsqueeze(1)
    # taps i0-1 .. i0+2 read a row padded by 2 (left) / 3 (right) replicated edge pixels == PIL's XCLIP
    base = (i0.int() + 1).clamp_(0, W).unsqueeze(1).expand(B, C, H, W).long()
    xd = x.double()
    padded = torch.cat([xd[..., :1].expand(B, C, H, 2), xd, xd[..., -1:].expand(B, C, H, 3)], 3)
    v1, v2, v3, v4 = (padded[..., k:k + W + 1].gather(3, base) for k in range(4))
    # PIL's BICUBIC macro, same operation order: p's are exact integers, Horner in double
    p2 = v3 - v1
    p3 = (v1 - v2).mul_(2).add_(v3).sub_(v4)
    p4 = v1.neg_().add_(v2).sub_(v3).add_(v4)
    out = p4.mul_(d).add_(p3).mul_(d).add_(p2).mul_(d).add_(v2).clamp_(0, 255).to(torch.uint8)
    valid = ((u >= 0) & (u < W)).unsqueeze(1)
    return torch.where(valid, out, torch.tensor(fill, dtype=x.dtype, device=x.device))


# ----------------------------------------------------------------------------- crop / flip / cutout


def hflip(x: Tensor) -> Tensor:
    """Mirror every image left-right."""
    return x.flip(3)


def vflip(x: Tensor) -> Tensor:
    """Mirror every image top-bottom."""
    return x.flip(2)


def crop_flip(x: Tensor, padding: int = 4) -> Tensor:
    """RandomCrop(size, padding, fill=0) + RandomHorizontalFlip(0.5), per sample, as one gather."""
    B, C, H, W = x.shape
    dev = x.device
    oy = torch.randint(0, 2 * padding + 1, (B,), device=dev)
    ox = torch.randint(0, 2 * padding + 1, (B,), device=dev)
    flip = torch.rand(B, device=dev) < 0.5
    windows = F.pad(x, (padding,) * 4).unfold(2, H, 1).unfold(3, W, 1)  # [B,C,2p+1,2p+1,H,W] view
    out = windows[torch.arange(B, device=dev), :, oy, ox]
    return torch.where(_b4(flip), out.flip(3), out)


def cutout(x: Tensor, size: Mag = 16, fill: Optional[Sequence[int]] = None,
           centers: Optional[Tensor] = None) -> Tensor:
    """Paint a box of rows max(0,cy-s//2)..min(H,cy+s//2) (same for columns) per sample.

    Centres (cy, cx) are uniform in [0,H) x [0,W) unless `centers` ([B,2] ints) is given; `size` may be
    per sample. Default fill is the public code's RGB (125,122,113); it has no grey equivalent, so for
    C==1 we paint 120 (their mean; PIL luma of that colour would be 122).
    """
    B, C, H, W = x.shape
    dev = x.device
    half = torch.div(_param(size, x, torch.int64), 2, rounding_mode="floor").unsqueeze(1)
    if centers is None:
        cy = torch.randint(0, H, (B, 1), device=dev)
        cx = torch.randint(0, W, (B, 1), device=dev)
    else:
        cy, cx = centers.to(dev).long().unbind(1)
        cy, cx = cy.unsqueeze(1), cx.unsqueeze(1)
    r = torch.arange(H, device=dev).unsqueeze(0)
    c = torch.arange(W, device=dev).unsqueeze(0)
    in_r = (r >= (cy - half).clamp(min=0)) & (r < (cy + half).clamp(max=H))
    in_c = (c >= (cx - half).clamp(min=0)) & (c < (cx + half).clamp(max=W))
    box = (in_r.unsqueeze(2) & in_c.unsqueeze(1)).unsqueeze(1)  # [B,1,H,W]
    if fill is None:
        fill = (125, 122, 113) if C == 3 else (120,) * C
    fill_t = torch.as_tensor(fill, dtype=x.dtype, device=dev).view(1, -1, 1, 1)
    return torch.where(box, fill_t, x)


# ----------------------------------------------------------------------------- colour ops


def brightness(x: Tensor, factor: Mag) -> Tensor:
    """ImageEnhance.Brightness: blend with black."""
    return _blend(torch.zeros((), device=x.device), x, factor)


def contrast(x: Tensor, factor: Mag) -> Tensor:
    """ImageEnhance.Contrast: blend with the rounded mean of the grey image, int(mean + 0.5)."""
    g = _gray(x) if x.shape[1] == 3 else x
    mean = g.sum(dim=(1, 2, 3), dtype=torch.int64).double() / g[0].numel()
    return _blend(_b4(torch.floor(mean + 0.5).float()), x, factor)


def color(x: Tensor, factor: Mag) -> Tensor:
    """ImageEnhance.Color (saturation): blend with the grey image; identity for C==1."""
    if x.shape[1] == 1:
        return x.clone()
    return _blend(_gray(x).float(), x, factor)


def _smooth(x: Tensor) -> Tensor:
    """PIL ImageFilter.SMOOTH ([[1,1,1],[1,5,1],[1,1,1]]/13, rounded) with the 1-pixel border unchanged."""
    B, C, H, W = x.shape
    out = x.float()
    if H < 3 or W < 3:
        return out
    k = torch.ones(1, 1, 3, 3, device=x.device)
    k[0, 0, 1, 1] = 5
    s = F.conv2d(out.reshape(B * C, 1, H, W), k).view(B, C, H - 2, W - 2)
    out = out.clone()
    out[:, :, 1:-1, 1:-1] = torch.div(s + 6, 13, rounding_mode="floor")  # exact round(s / 13)
    return out


def sharpness(x: Tensor, factor: Mag) -> Tensor:
    """ImageEnhance.Sharpness: blend with the SMOOTH-filtered image (border pixels kept)."""
    return _blend(_smooth(x), x, factor)


def posterize(x: Tensor, bits: Mag) -> Tensor:
    """ImageOps.posterize: keep the top `bits` (1..8) bits of every pixel."""
    shift = 8 - _param(bits, x, torch.int64)
    mask = ((255 << shift) & 255).to(torch.uint8)
    return x & _b4(mask)


def solarize(x: Tensor, threshold: Mag) -> Tensor:
    """ImageOps.solarize: pixels >= threshold become 255 - pixel (threshold may be fractional; 256 = no-op)."""
    thr = torch.ceil(_param(threshold, x, torch.float64))
    hit = (x >= _b4(thr.clamp(0, 255).to(torch.uint8))) & _b4(thr <= 255)
    return torch.where(hit, 255 - x, x)


def invert(x: Tensor) -> Tensor:
    """ImageOps.invert."""
    return 255 - x


def autocontrast(x: Tensor) -> Tensor:
    """ImageOps.autocontrast(cutoff=0) per image and channel: lut = int(v*255/(hi-lo) - lo*scale)."""
    B, C, H, W = x.shape
    lo, hi = torch.aminmax(x.reshape(B * C, H * W), dim=1, keepdim=True)
    lo, hi = lo.double(), hi.double()
    flat = hi <= lo
    scale = torch.full_like(hi, 255.0) / torch.where(flat, torch.ones_like(hi), hi - lo)  # not 255.0/t (reciprocal)
    offset = -lo * scale
    v = torch.arange(256, device=x.device, dtype=torch.float64)
    lut = torch.floor(v * scale + offset).clamp_(0, 255)  # int() of values >= 0 for every occurring pixel
    return _apply_lut(x, torch.where(flat, v, lut))


def equalize(x: Tensor) -> Tensor:
    """ImageOps.equalize per image and channel (PIL's lut: (step//2 + cumhist_before[v]) // step)."""
    B, C, H, W = x.shape
    flat = x.reshape(B * C, H * W).long()
    hist = torch.zeros(B * C, 256, dtype=torch.int64, device=x.device)
    hist.scatter_add_(1, flat, torch.ones(1, dtype=torch.int64, device=x.device).expand_as(flat))
    cum = hist.cumsum(1)
    last = cum.argmax(1, keepdim=True)  # first index reaching the total = last non-empty bin
    step = torch.div(H * W - hist.gather(1, last), 255, rounding_mode="floor")  # [BC,1]
    safe = step.clamp(min=1)
    lut = torch.div(torch.div(safe, 2, rounding_mode="floor") + cum - hist, safe, rounding_mode="floor")
    ident = torch.arange(256, device=x.device).expand_as(lut)
    lut = torch.where(step > 0, lut.clamp(max=255), ident)
    return lut.gather(1, flat).to(torch.uint8).view(B, C, H, W)


# ----------------------------------------------------------------------------- geometric ops (PIL Image.transform)


def shear_x(x: Tensor, m: Mag, fill: float = 128) -> Tensor:
    """PIL affine (1, m, 0, 0, 1, 0), BICUBIC as in the public code: out(px,py) = in(px + m*py, py)."""
    H, W = x.shape[-2:]
    u = _centres(W, x).view(1, 1, W) + _param(m, x, torch.float64).view(-1, 1, 1) * _centres(H, x).view(1, H, 1)
    return _cubic_along_w(x, u, fill)


def shear_y(x: Tensor, m: Mag, fill: float = 128) -> Tensor:
    """PIL affine (1, 0, 0, m, 1, 0), BICUBIC: out(px,py) = in(px, m*px + py)."""
    H, W = x.shape[-2:]
    u = _param(m, x, torch.float64).view(-1, 1, 1) * _centres(W, x).view(1, W, 1) + _centres(H, x).view(1, 1, H)
    return _cubic_along_w(x.transpose(2, 3), u, fill).transpose(2, 3).contiguous()  # u is [B, px, py]


def translate_x(x: Tensor, pixels: Mag, fill: float = 128) -> Tensor:
    """PIL affine (1, 0, t, 0, 1, 0), NEAREST: out(px,py) = in(px + t, py)."""
    W = x.shape[3]
    t = _param(pixels, x, torch.float64).unsqueeze(1)
    ix = torch.floor((t + 0.5) + torch.arange(W, device=x.device)).long()  # PIL ImagingScaleAffine
    return _shift_along_w(x, ix, fill)


def translate_y(x: Tensor, pixels: Mag, fill: float = 128) -> Tensor:
    """PIL affine (1, 0, 0, 0, 1, t), NEAREST: out(px,py) = in(px, py + t)."""
    return translate_x(x.transpose(2, 3), pixels, fill).transpose(2, 3).contiguous()


def rotate(x: Tensor, degrees: Mag, fill: float = 128) -> Tensor:
    """PIL Image.rotate(deg) (counter-clockwise about the centre, NEAREST) incl. its 16.16 fixed-point sampler."""
    B, _, H, W = x.shape
    ang = -(torch.remainder(_param(degrees, x, torch.float64), 360.0) * (math.pi / 180.0))
    cos, sin = torch.round(torch.cos(ang), decimals=15), torch.round(torch.sin(ang), decimals=15)
    a0, a1, a3, a4 = cos, sin, -sin, cos
    cx, cy = W / 2.0, H / 2.0
    a2 = a0 * -cx + a1 * -cy + 0.0 + cx
    a5 = a3 * -cx + a4 * -cy + 0.0 + cy

    def fix(v: Tensor) -> Tensor:
        return torch.floor(v * 65536.0 + 0.5).int().view(B, 1, 1)

    py = torch.arange(H, device=x.device, dtype=torch.int32).view(1, H, 1)
    px = torch.arange(W, device=x.device, dtype=torch.int32).view(1, 1, W)
    ix = (fix(a2 + a0 * 0.5 + a1 * 0.5) + px * fix(a0) + py * fix(a1)) >> 16
    iy = (fix(a5 + a3 * 0.5 + a4 * 0.5) + px * fix(a3) + py * fix(a4)) >> 16
    return _gather_nearest(x, iy, ix, fill)


# ----------------------------------------------------------------------------- AutoAugment / RandAugment


def _linspace(a: float, b: float, n: int = 10) -> list[float]:
    """numpy.linspace arithmetic (start + i*step, exact endpoint)."""
    step = (b - a) / (n - 1)
    return [a + i * step for i in range(n - 1)] + [float(b)]


POLICY_OPS: tuple[str, ...] = (
    "invert", "cutout", "sharpness", "autocontrast", "posterize", "shearX", "translateX", "translateY",
    "shearY", "rotate", "equalize", "contrast", "color", "solarize", "brightness")

_ENHANCE = _linspace(0.0, 0.9)
POLICY_RANGES: dict[str, list[float]] = {
    "shearX": _linspace(0, 0.3), "shearY": _linspace(0, 0.3),
    "translateX": _linspace(0, 150 / 331), "translateY": _linspace(0, 150 / 331),
    "rotate": _linspace(0, 30), "solarize": _linspace(256, 0),
    "posterize": [8, 8, 7, 7, 6, 6, 5, 5, 4, 4], "cutout": [0, 2, 4, 7, 9, 11, 13, 16, 18, 20],
    "color": _ENHANCE, "contrast": _ENHANCE, "sharpness": _ENHANCE, "brightness": _ENHANCE,
    "autocontrast": [0.0] * 10, "equalize": [0.0] * 10, "invert": [0.0] * 10,
}

CIFAR10_POLICY: tuple[tuple, ...] = (
    (0.1, "invert", 7, 0.2, "contrast", 6), (0.7, "rotate", 2, 0.3, "translateX", 9),
    (0.8, "sharpness", 1, 0.9, "sharpness", 3), (0.5, "shearY", 8, 0.7, "translateY", 9),
    (0.5, "autocontrast", 8, 0.9, "equalize", 2), (0.2, "shearY", 7, 0.3, "posterize", 7),
    (0.4, "color", 3, 0.6, "brightness", 7), (0.3, "sharpness", 9, 0.7, "brightness", 9),
    (0.6, "equalize", 5, 0.5, "equalize", 1), (0.6, "contrast", 7, 0.6, "sharpness", 5),
    (0.7, "color", 7, 0.5, "translateX", 8), (0.3, "equalize", 7, 0.4, "autocontrast", 8),
    (0.4, "translateY", 3, 0.2, "sharpness", 6), (0.9, "brightness", 6, 0.2, "color", 8),
    (0.5, "solarize", 2, 0.0, "invert", 3), (0.2, "equalize", 0, 0.6, "autocontrast", 0),
    (0.2, "equalize", 8, 0.6, "equalize", 4), (0.9, "color", 9, 0.6, "equalize", 6),
    (0.8, "autocontrast", 4, 0.2, "solarize", 8), (0.1, "brightness", 3, 0.7, "color", 0),
    (0.4, "solarize", 5, 0.9, "autocontrast", 3), (0.9, "translateY", 9, 0.7, "translateY", 9),
    (0.9, "autocontrast", 2, 0.8, "solarize", 3), (0.8, "equalize", 8, 0.1, "invert", 3),
    (0.7, "translateY", 9, 0.9, "autocontrast", 1),
)


def _random_sign(v: Tensor) -> Tensor:
    return torch.where(torch.rand(v.shape, device=v.device) < 0.5, -v, v)


def apply_policy_op(name: str, x: Tensor, value: Tensor) -> Tensor:
    """Apply policy op `name` with table values `value` [B] (random sign drawn here where the public code does)."""
    H, W = x.shape[-2:]
    if name in ("color", "contrast", "sharpness", "brightness"):
        return OPS[name](x, 1 + _random_sign(value))
    if name in ("shearX", "shearY"):
        return (shear_x if name == "shearX" else shear_y)(x, _random_sign(value))
    if name == "translateX":
        return translate_x(x, _random_sign(value) * W)
    if name == "translateY":
        return translate_y(x, _random_sign(value) * H)
    if name == "rotate":
        return rotate(x, value)  # no random sign in the reference implementation
    if name == "posterize":
        return posterize(x, value.long())
    if name == "solarize":
        return solarize(x, value)
    if name == "cutout":
        return cutout(x, value.long())
    return OPS[name](x)  # invert / autocontrast / equalize ignore the magnitude


def _table(x: Tensor) -> Tensor:
    """[15, 10] float64 magnitude table, rows in POLICY_OPS order."""
    return torch.tensor([POLICY_RANGES[n] for n in POLICY_OPS], dtype=torch.float64, device=x.device)


def _run_stage(x: Tensor, op: Tensor, value: Tensor, apply: Tensor) -> Tensor:
    """Apply op[b] with value[b] to the samples with apply[b]; one call per op type (one host sync)."""
    n = len(POLICY_OPS)
    code = torch.where(apply, op, torch.full_like(op, n))
    counts = torch.bincount(code, minlength=n + 1).tolist()
    groups = torch.argsort(code, stable=True).split(counts)
    out = x.clone()
    for k, idx in enumerate(groups[:n]):
        if idx.numel():
            out[idx] = apply_policy_op(POLICY_OPS[k], x[idx], value[idx])
    return out


def autoaugment_cifar10(x: Tensor) -> Tensor:
    """DeepVoltaire CIFAR10Policy per sample: uniform sub-policy, op1 w.p. p1 then op2 w.p. p2."""
    B, dev = x.shape[0], x.device
    code = {n: i for i, n in enumerate(POLICY_OPS)}
    pol = torch.tensor([[p1, code[o1], m1, p2, code[o2], m2] for p1, o1, m1, p2, o2, m2 in CIFAR10_POLICY],
                       dtype=torch.float64, device=dev)[torch.randint(0, len(CIFAR10_POLICY), (B,), device=dev)]
    table = _table(x)
    for s in (0, 3):
        op, mag = pol[:, s + 1].long(), pol[:, s + 2].long()
        x = _run_stage(x, op, table[op, mag], torch.rand(B, device=dev) < pol[:, s])
    return x


def randaugment(x: Tensor) -> Tensor:
    """`randaugment` 1.0.2 RandAugment: two uniform (op, magnitude 1..9) picks, each applied w.p. 0.5."""
    B, dev = x.shape[0], x.device
    table = _table(x)
    for _ in range(2):
        op = torch.randint(0, len(POLICY_OPS), (B,), device=dev)
        mag = torch.randint(1, 10, (B,), device=dev)
        x = _run_stage(x, op, table[op, mag], torch.rand(B, device=dev) < 0.5)
    return x


# ----------------------------------------------------------------------------- uncertainty views


def _random_flip(x: Tensor, dim: int) -> Tensor:
    keep = torch.rand(x.shape[0], device=x.device) >= 0.5
    return torch.where(_b4(keep), x, x.flip(dim))


def _random_rotation(x: Tensor, max_deg: float) -> Tensor:
    angle = (torch.rand(x.shape[0], device=x.device) * 2 - 1) * max_deg  # RandomRotation: U(-d, d)
    return rotate(x, angle, fill=0)


_VR_FAMILIES: tuple[Callable[[Tensor], Tensor], ...] = (
    lambda x: cutout(x, 8), lambda x: cutout(x, 16), lambda x: cutout(x, 24), lambda x: cutout(x, 32),
    lambda x: _random_flip(x, 3), lambda x: _random_flip(x, 2),
    lambda x: _random_rotation(x, 45), lambda x: _random_rotation(x, 90),
    invert, lambda x: solarize(x, 128), lambda x: solarize(x, 64), lambda x: solarize(x, 32),
)
UNCERTAINTY_METRICS: tuple[str, ...] = ("vr", "vr_randaug", "vr_cutout", "vr_autoaug")


def iter_uncertainty_views(x: Tensor, metric: str, k: int = 12) -> Iterator[Tensor]:
    """Yield the k perturbed views of Rainbow Memory's uncertainty one at a time ("vr" cycles its 12 families)."""
    if metric not in UNCERTAINTY_METRICS:
        raise ValueError(f"unknown uncertainty metric {metric!r}; valid: {', '.join(UNCERTAINTY_METRICS)}")
    single = {"vr_randaug": randaugment, "vr_cutout": lambda v: cutout(v, 16),
              "vr_autoaug": autoaugment_cifar10}.get(metric)

    def views() -> Iterator[Tensor]:
        for i in range(k):
            yield single(x) if single is not None else _VR_FAMILIES[i % len(_VR_FAMILIES)](x)

    return views()


def uncertainty_views(x: Tensor, metric: str, k: int = 12) -> list[Tensor]:
    """List of the k uint8 views used by Rainbow Memory's variance-ratio uncertainty."""
    return list(iter_uncertainty_views(x, metric, k))


# ----------------------------------------------------------------------------- normalise / cutmix / pipelines


def normalize(x: Tensor, mean: Sequence[float], std: Sequence[float]) -> Tensor:
    """ToTensor + Normalize: (x/255 - mean)/std as float32, mean/std of length 1 or C."""
    C = x.shape[1]
    if len(mean) not in (1, C) or len(std) not in (1, C):
        raise ValueError(f"mean/std must have length 1 or {C}, got {len(mean)} and {len(std)}")
    m, s = _moments(tuple(mean), tuple(std), x.device)
    return (x.float() / 255.0 - m) / s


_MOMENTS: dict[tuple, tuple[Tensor, Tensor]] = {}


def _moments(mean: tuple, std: tuple, device: torch.device) -> tuple[Tensor, Tensor]:
    """mean and std as [1, C, 1, 1] float32 tensors on ``device``, made once (normalize runs every step)."""
    key = (mean, std, device)
    if key not in _MOMENTS:
        _MOMENTS[key] = tuple(torch.as_tensor(v, dtype=torch.float32, device=device).view(1, -1, 1, 1)
                              for v in (mean, std))
    return _MOMENTS[key]


_BETA: dict[float, Tensor] = {}


def beta_sample(alpha: float) -> float:
    """One draw of Beta(alpha, alpha): ``torch.distributions.Beta(alpha, alpha).sample()``'s own draw (a Dirichlet
    sample of (alpha, alpha), its first part), without building the distribution every step."""
    if alpha not in _BETA:
        _BETA[alpha] = torch.tensor([float(alpha), float(alpha)])
    return float(torch._sample_dirichlet(_BETA[alpha])[0])


def cutmix(x: Tensor, y: Tensor, alpha: float = 1.0) -> tuple[Tensor, Tensor, Tensor, float]:
    """Public cutmix_data/rand_bbox (W=size(2), H=size(3) as there); returns (mixed clone, y, y[perm], lam)."""
    lam = beta_sample(alpha)
    perm = torch.randperm(x.shape[0], device=x.device)
    W, H = x.shape[2], x.shape[3]
    cut_rat = math.sqrt(1.0 - lam)
    cut_w, cut_h = int(W * cut_rat), int(H * cut_rat)
    cx, cy = int(torch.randint(W, (1,))), int(torch.randint(H, (1,)))
    bbx1, bbx2 = min(max(cx - cut_w // 2, 0), W), min(max(cx + cut_w // 2, 0), W)
    bby1, bby2 = min(max(cy - cut_h // 2, 0), H), min(max(cy + cut_h // 2, 0), H)
    out = x.clone()
    out[:, :, bbx1:bbx2, bby1:bby2] = x[perm, :, bbx1:bbx2, bby1:bby2]
    lam = 1 - (bbx2 - bbx1) * (bby2 - bby1) / (H * W)
    return out, y, y[perm], lam


TRANSFORMS: tuple[str, ...] = ("cutmix", "cutout", "randaug", "autoaug")  # --transforms choices


class TrainAugment:
    """crop_flip -> [cutout 16] -> [randaug] -> [autoaug] -> normalize; "cutmix" is only flagged for the trainer."""

    VALID = TRANSFORMS

    def __init__(self, transforms: Sequence[str], mean: Sequence[float], std: Sequence[float],
                 crop_padding: int = 4) -> None:
        bad = [t for t in transforms if t not in self.VALID]
        if bad:
            raise ValueError(f"unknown transforms {bad}; valid: {list(self.VALID)}")
        self.transforms = list(transforms)
        self.mean, self.std, self.crop_padding = tuple(mean), tuple(std), crop_padding
        self.cutmix = "cutmix" in self.transforms
        self.steps = [t for t in ("cutout", "randaug", "autoaug") if t in self.transforms]

    def __call__(self, x: Tensor) -> Tensor:
        x = crop_flip(x, self.crop_padding)
        for t in self.steps:
            x = cutout(x, 16) if t == "cutout" else randaugment(x) if t == "randaug" else autoaugment_cifar10(x)
        return normalize(x, self.mean, self.std)

    def __repr__(self) -> str:
        steps = [f"crop_flip(padding={self.crop_padding})"] + [
            {"cutout": "cutout(16)", "randaug": "randaugment", "autoaug": "autoaugment_cifar10"}[t]
            for t in self.steps] + [f"normalize(mean={self.mean}, std={self.std})"]
        return f"TrainAugment({' -> '.join(steps)}, cutmix={self.cutmix})"


class TestAugment:
    """Evaluation pipeline: normalize only."""

    __test__ = False  # not a pytest test class

    def __init__(self, mean: Sequence[float], std: Sequence[float]) -> None:
        self.mean, self.std = tuple(mean), tuple(std)

    def __call__(self, x: Tensor) -> Tensor:
        return normalize(x, self.mean, self.std)

    def __repr__(self) -> str:
        return f"TestAugment(normalize(mean={self.mean}, std={self.std}))"


OPS: dict[str, Callable[..., Tensor]] = {
    "crop_flip": crop_flip, "hflip": hflip, "vflip": vflip, "cutout": cutout,
    "brightness": brightness, "contrast": contrast, "color": color, "sharpness": sharpness,
    "posterize": posterize, "solarize": solarize, "invert": invert, "autocontrast": autocontrast,
    "equalize": equalize, "shear_x": shear_x, "shear_y": shear_y, "translate_x": translate_x,
    "translate_y": translate_y, "rotate": rotate, "autoaugment_cifar10": autoaugment_cifar10,
    "randaugment": randaugment, "normalize": normalize, "cutmix": cutmix,
}


def get_op(name: str) -> Callable[..., Tensor]:
    """Look up an op by name (keys of OPS), with a helpful error."""
    try:
        return OPS[name]
    except KeyError:
        raise KeyError(f"unknown augmentation op {name!r}; valid: {sorted(OPS)}") from None
