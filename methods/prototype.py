"""iCaRL's herding selection, nearest-mean scores, and the feature-head model wrapper."""
from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from utils.augment import normalize

Featurizer = Callable[[torch.Tensor], torch.Tensor]  # training-set indices -> L2-normalised features [n, D]
FEATURE_BATCH = 1024


class FeatureHeadNet(nn.Module):
    """iCaRL's network (public ICaRLNet): the base model with its head replaced by
    Linear(in, feature_size) (with bias) is the feature extractor; then BatchNorm1d(feature_size,
    momentum 0.01, default eps), ReLU and a bias-free linear head ``fc``."""

    def __init__(self, base: nn.Module, feature_size: int, n_out: int) -> None:
        super().__init__()
        base.fc = nn.Linear(base.fc.in_features, feature_size)
        self.extractor = base
        self.feature_size = feature_size
        self.bn = nn.BatchNorm1d(feature_size, momentum=0.01)
        self.fc = nn.Linear(feature_size, n_out, bias=False)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """The extractor's output (before BN/ReLU): what herding and nearest-mean use."""
        return self.extractor(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(F.relu(self.bn(self.extractor(x))))


def model_featurizer(model: nn.Module, images: torch.Tensor, mean, std, batch: int = FEATURE_BATCH) -> Featurizer:
    """Featurizer over ``images`` (uint8 [N,C,H,W]): test-time preprocessing (normalisation only),
    ``model.features`` in eval mode, batched on the device, each row L2-normalised."""
    @torch.no_grad()
    def featurize(idx: torch.Tensor) -> torch.Tensor:
        model.eval()
        out = [F.normalize(model.features(normalize(images[idx[s:s + batch]], mean, std)).float(), dim=1)
               for s in range(0, len(idx), batch)]
        return torch.cat(out) if out else torch.empty(0, 0, device=images.device)
    return featurize


def method_featurizer(method) -> Featurizer:
    """Featurizer of a Method: its model's ``features`` (the feature head of a FeatureHeadNet,
    the penultimate features of a plain model) on its training images."""
    return model_featurizer(method.model, method.data.train.images, method.data.mean, method.data.std)


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


def class_means(features: torch.Tensor, labels: torch.Tensor, n_classes: int) -> torch.Tensor:
    """Per class: mean of the (L2-normalised) features, L2-normalised; zeros for a class with no
    sample (public icarl_evaluation)."""
    d = features.shape[1] if features.dim() == 2 else 0
    sums = torch.zeros(n_classes, d, device=features.device).index_add_(0, labels, features.float())
    counts = torch.bincount(labels, minlength=n_classes)[:n_classes].clamp_min(1).unsqueeze(1)
    return F.normalize(sums / counts, dim=1)


def nme_scores(features: torch.Tensor, means: torch.Tensor) -> torch.Tensor:
    """Nearest-mean-of-exemplars scores: minus the squared Euclidean distance of each
    (L2-normalised) feature to each class mean, so argmax/top-k give the nearest means."""
    d2 = (features * features).sum(1, keepdim=True) - 2 * features @ means.T + (means * means).sum(1)
    return -d2
