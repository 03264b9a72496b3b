"""Exact per-channel pixel statistics of uint8 images (the same numbers however they are gathered)."""
from __future__ import annotations

import math

import torch


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
