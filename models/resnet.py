"""The paper's ResNets: resnet18 (CIFAR-10), resnet32 (CIFAR-100) and resnet34 (ImageNet), laid out as the public code."""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from models.mlp import FinalBlock

BN_EPS = 1e-6
IMAGENET_STEM_MIN_SIZE = 64  # inputs this large or larger get the ImageNet layout (7x7/2 stem + max-pool)

# Where the public code differs from a standard (He et al. / torchvision) ResNet:
# * every conv, including the second conv of a block and the 1x1 projection shortcut, is
#   conv-BN-ReLU (public ConvBlock): the residual branch and the projection end in a ReLU
#   before the sum (standard: BN only);
# * CIFAR layout (public cifar.py): no ReLU after the sum. ImageNet layout (public imagenet.py):
#   a ReLU after the sum as well, which is a no-op since both addends are already >= 0;
# * resnet32 uses 1x1-conv projection shortcuts (He et al.'s CIFAR nets pad with zeros);
# * the initial head is a bias-free Linear followed by BatchNorm1d (FinalBlock), BN eps 1e-6.


class ConvBNReLU(nn.Module):
    """Bias-free conv ('same' padding), BatchNorm2d and ReLU: the public ConvBlock."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, stride: int = 1,
                 bn_eps: float = BN_EPS) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, kernel_size, stride=stride,
                              padding=kernel_size // 2, bias=False)
        self.bn = nn.BatchNorm2d(out_channels, eps=bn_eps)

    def forward(self, x: torch.Tensor, weight: torch.Tensor | None = None) -> torch.Tensor:
        if weight is None:
            out = self.conv(x)
        else:
            out = F.conv2d(x, weight, None, self.conv.stride, self.conv.padding)
        return F.relu(self.bn(out))


class BasicBlock(nn.Module):
    """conv-BN-ReLU, conv-BN-ReLU, plus the shortcut (identity, or a 1x1 conv-BN-ReLU projection
    when the stride or width changes); ``relu_after_sum`` only for the ImageNet layout."""

    def __init__(self, in_channels: int, out_channels: int, stride: int = 1, relu_after_sum: bool = False,
                 bn_eps: float = BN_EPS) -> None:
        super().__init__()
        self.conv1 = ConvBNReLU(in_channels, out_channels, 3, stride, bn_eps)
        self.conv2 = ConvBNReLU(out_channels, out_channels, 3, 1, bn_eps)
        self.shortcut = (ConvBNReLU(in_channels, out_channels, 1, stride, bn_eps)
                         if stride != 1 or in_channels != out_channels else None)
        self.relu_after_sum = relu_after_sum

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.conv2(self.conv1(x))
        out = out + (x if self.shortcut is None else self.shortcut(x))
        return F.relu(out) if self.relu_after_sum else out


class ResNet(nn.Module):
    """Stem, stages of basic blocks (the first block of every stage but the first has stride 2),
    global average pooling, head ``fc``.

    CIFAR layout: 3x3 stride-1 stem, no max-pool. ImageNet layout: 7x7 stride-2 stem and 3x3
    stride-2 max-pool. ``in_channels`` is the channel count the stem is defined for; a 1-channel
    image fed to a 3-channel model uses the stem weight summed over its input channels, which is
    exactly the 3-channel model on the grey image repeated three times.
    """

    def __init__(self, num_classes: int, blocks: Sequence[int], widths: Sequence[int], in_channels: int = 3,
                 imagenet: bool = False, bn_eps: float = BN_EPS) -> None:
        super().__init__()
        if len(blocks) != len(widths):
            raise ValueError("one width per stage")
        self.in_channels = in_channels
        self.imagenet = imagenet
        self.stem = ConvBNReLU(in_channels, widths[0], 7 if imagenet else 3, 2 if imagenet else 1, bn_eps)
        self.maxpool = nn.MaxPool2d(3, stride=2, padding=1) if imagenet else nn.Identity()
        stages, width = [], widths[0]
        for i, (n, w) in enumerate(zip(blocks, widths)):
            layer = [BasicBlock(width if j == 0 else w, w, 2 if (i > 0 and j == 0) else 1, imagenet, bn_eps)
                     for j in range(n)]
            stages.append(nn.Sequential(*layer))
            width = w
        self.stages = nn.Sequential(*stages)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.dim_out = width
        self.fc: nn.Module = FinalBlock(width, num_classes, bn_eps)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def _stem_weight(self, x_channels: int) -> torch.Tensor | None:
        if x_channels == self.in_channels:
            return None
        if x_channels == 1:
            return self.stem.conv.weight.sum(1, keepdim=True)
        raise ValueError(f"ResNet built for {self.in_channels} channels got {x_channels}")

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Penultimate features: globally pooled output of the last stage, [N, dim_out]."""
        out = self.maxpool(self.stem(x, self._stem_weight(x.shape[1])))
        return self.pool(self.stages(out)).flatten(1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.features(x))


def _imagenet_layout(input_size: int) -> bool:
    return input_size >= IMAGENET_STEM_MIN_SIZE


def resnet18(num_classes: int, in_channels: int = 3, input_size: int = 32) -> ResNet:
    """ResNet-18: 4 stages of 2 blocks, 64/128/256/512 channels (public cifar.py depth 18 for
    small inputs, imagenet.py for inputs of 64 pixels or more)."""
    return ResNet(num_classes, (2, 2, 2, 2), (64, 128, 256, 512), in_channels, _imagenet_layout(input_size))


def resnet32(num_classes: int, in_channels: int = 3, input_size: int = 32) -> ResNet:
    """ResNet-32 (6n+2, n=5): 3 stages of 5 blocks, 16/32/64 channels, 3x3 stem. The public code
    defines it only in the CIFAR layout, used whatever the input size."""
    del input_size  # global pooling: any size works; there is no ImageNet layout
    return ResNet(num_classes, (5, 5, 5), (16, 32, 64), in_channels, imagenet=False)


def resnet34(num_classes: int, in_channels: int = 3, input_size: int = 224) -> ResNet:
    """ResNet-34: 4 stages of 3/4/6/3 blocks, 64/128/256/512 channels (public imagenet.py for
    inputs of 64 pixels or more, cifar.py depth 34 for smaller ones)."""
    return ResNet(num_classes, (3, 4, 6, 3), (64, 128, 256, 512), in_channels, _imagenet_layout(input_size))
