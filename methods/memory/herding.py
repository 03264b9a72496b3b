"""iCaRL's herding memory (the public mean_feature_sampling): per class, exemplars whose running mean
stays closest to the class mean of L2-normalised features."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from methods.memory.base import MemoryManager, randperm, rank_within_class, register_manager


def herding(features: torch.Tensor, mean: torch.Tensor, m: int) -> torch.Tensor:
    """Greedy iCaRL herding as the public code does it: step j picks the candidate i (not yet
    picked) minimising || mu - normalise(phi_i + S) ||, S = sum of the features picked so far,
    mu = the (unit) class mean, phi = L2-normalised candidate features. Returns the picked
    row indices in order (at most ``m``); ties go to the lowest index.

    With unit mu and unit normalise(.) the distance is sqrt(2 - 2 mu.u/|u|), u = phi_i + S, so
    each step maximises mu.u/|u|; mu.phi, phi.S and |S|^2 are kept up to date (one matrix-vector
    product per step over all candidates, no host synchronisation)."""
    n = features.shape[0]
    k = min(m, n)
    phi = features.float()
    mu = mean.float()
    dev = phi.device
    a = phi @ mu  # mu . phi_i
    sq = (phi * phi).sum(1)  # |phi_i|^2 (1 up to rounding)
    s_dot = torch.zeros(n, device=dev)  # phi_i . S
    mu_s = torch.zeros(1, device=dev)  # mu . S
    s_sq = torch.zeros(1, device=dev)  # |S|^2
    taken = torch.zeros(n, dtype=torch.bool, device=dev)
    out = torch.empty(k, dtype=torch.long, device=dev)
    for j in range(k):  # 1-element index tensors: no .item(), no host sync
        norm = (sq + 2 * s_dot + s_sq).clamp_min(1e-24).sqrt()
        i = ((a + mu_s) / norm).masked_fill(taken, float("-inf")).argmax().view(1)
        out[j:j + 1] = i
        taken.index_fill_(0, i, True)
        s_sq = s_sq + 2 * s_dot.index_select(0, i) + sq.index_select(0, i)
        mu_s = mu_s + a.index_select(0, i)
        s_dot = s_dot + phi @ phi.index_select(0, i).squeeze(0)
    return out


@register_manager("prototype")
class PrototypeMemory(MemoryManager):
    """iCaRL herding (public mean_feature_sampling), m = size // num_class per class: old exemplar
    sets are first cut to m at random; a class that still has m exemplars keeps them; otherwise its
    candidates (this task's stream of the class, then its old exemplars) are all kept if they fit,
    else m are herded on L2-normalised features towards the class mean, which is computed from the
    candidates the first time the class is herded and kept from then on. Unused slots stay empty."""

    needs_features = True

    def __init__(self, size: int, labels: torch.Tensor) -> None:
        super().__init__(size, labels)
        self.class_mean: dict[int, torch.Tensor] = {}

    def state_dict(self) -> dict:
        return {**super().state_dict(), "class_mean": {c: m.cpu() for c, m in self.class_mean.items()}}

    def load_state_dict(self, state: dict) -> None:
        super().load_state_dict(state)
        self.class_mean = {c: m.to(self.labels.device) for c, m in state["class_mean"].items()}

    def update(self, stream, task_id, num_class, scorer=None, featurizer=None):
        cand = torch.cat([stream, self.indices])
        if len(cand) <= self.size:
            self.indices = cand
            self.seen = len(cand)
            return
        if featurizer is None:
            raise ValueError("prototype memory needs a featurizer (model features of the candidates)")
        m = self.size // num_class
        old = reduce_per_class(self.indices, self.labels, m)
        y_old, y_new = self.labels[old], self.labels[stream]
        old_counts = torch.bincount(y_old, minlength=num_class).tolist()
        kept: list[torch.Tensor] = []
        herd: list[tuple[int, int, torch.Tensor]] = []  # (class, slot in kept, candidates)
        for c in range(num_class):
            ex = old[y_old == c]
            if old_counts[c] >= m:
                kept.append(ex)
                continue
            cand_c = torch.cat([stream[y_new == c], ex])
            kept.append(cand_c)
            if len(cand_c) > m:
                herd.append((c, len(kept) - 1, cand_c))
        if herd:
            feats = featurizer(torch.cat([h[2] for h in herd])).split([len(h[2]) for h in herd])
            for (c, slot, cand_c), f in zip(herd, feats):
                if c not in self.class_mean:  # the public code never replaces a class mean
                    self.class_mean[c] = F.normalize(f.mean(0), dim=0)
                kept[slot] = cand_c[herding(f, self.class_mean[c], m)]
        self.indices = torch.cat(kept) if kept else old[:0]


def reduce_per_class(indices: torch.Tensor, labels: torch.Tensor, m: int) -> torch.Tensor:
    """A random subset of min(m, n_c) samples of each class c (public _reduce_exemplar_sets)."""
    if len(indices) == 0:
        return indices
    shuffled = indices[randperm(len(indices), indices.device)]
    rank = rank_within_class(labels[shuffled])
    return shuffled[rank < m]
