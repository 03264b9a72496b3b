"""Index batches: a shuffled pool cut into batches, and runs of whole batches augmented as one chunk."""
from __future__ import annotations

import torch

AUG_CHUNK = 4096  # samples per augmentation call (whole batches only)


def shuffled_batches(pool: torch.Tensor, batch: int, drop_last: bool) -> list[torch.Tensor]:
    """A random permutation of ``pool`` cut into batches."""
    if len(pool) == 0 or batch <= 0:
        return []
    perm = pool[torch.randperm(len(pool), device=pool.device)]
    n_full = len(perm) // batch
    out = list(perm[: n_full * batch].view(n_full, batch)) if n_full else []
    if not drop_last and len(perm) % batch:
        out.append(perm[n_full * batch:])
    return out


def aug_spans(sizes: list[int], chunk: int = AUG_CHUNK) -> list[tuple[int, int]]:
    """Runs [i, j) of consecutive batches (sizes given) that make one augmentation chunk: as many
    whole batches as fit in ``chunk`` samples, at least one."""
    spans, i = [], 0
    while i < len(sizes):
        j, n = i, 0
        while j < len(sizes) and (n == 0 or n + sizes[j] <= chunk):
            n += sizes[j]
            j += 1
        spans.append((i, j))
        i = j
    return spans
