"""iCaRL's network: a base model whose head becomes a feature layer, then BN, ReLU and a bias-free head."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


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
