"""The paper's MNIST model: mlp400 ([Linear 400, BN, ReLU] x 2 -> linear head)."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class ScaleGrad(torch.autograd.Function):
    """Identity in the forward pass; multiplies the gradient by ``c`` in the backward pass (works
    under torch.func transforms: EWC's vmapped Fisher)."""

    generate_vmap_rule = True

    @staticmethod
    def forward(w: torch.Tensor, c: float) -> torch.Tensor:
        return w.view_as(w)

    @staticmethod
    def setup_context(ctx, inputs, output) -> None:
        ctx.c = inputs[1]

    @staticmethod
    def backward(ctx, g: torch.Tensor):
        return g * ctx.c, None


class ScaleValue(torch.autograd.Function):
    """Multiplies by ``c`` in the forward pass; the gradient passes unchanged (mlp400's Adam fold)."""

    generate_vmap_rule = True

    @staticmethod
    def forward(w: torch.Tensor, c: float) -> torch.Tensor:
        return w * c

    @staticmethod
    def setup_context(ctx, inputs, output) -> None:
        pass

    @staticmethod
    def backward(ctx, g: torch.Tensor):
        return g, None


FOLDS = ("sgd", "adam")  # mlp400's grey folds, by the optimizer that keeps them exact


class FCBlock(nn.Module):
    """Bias-free linear layer, BatchNorm1d (eps 1e-6) and ReLU, as the public code's FCBlock."""

    def __init__(self, in_features: int, out_features: int, bn_eps: float = 1e-6) -> None:
        super().__init__()
        self.lin = nn.Linear(in_features, out_features, bias=False)
        self.bn = nn.BatchNorm1d(out_features, eps=bn_eps)
        self.in_features = in_features
        self.out_features = out_features

    def forward(self, x: torch.Tensor, weight: torch.Tensor | None = None) -> torch.Tensor:
        w = self.lin.weight if weight is None else weight
        return F.relu(self.bn(F.linear(x, w)))


class FinalBlock(nn.Module):
    """The public code's initial head: bias-free linear layer followed by BatchNorm1d (no ReLU).
    Methods that replace the head each task (rm, finetune, ewc, ...) never train it; gdumb and
    joint, which rebuild the model, do."""

    def __init__(self, in_features: int, out_features: int, bn_eps: float = 1e-6) -> None:
        super().__init__()
        self.lin = nn.Linear(in_features, out_features, bias=False)
        self.bn = nn.BatchNorm1d(out_features, eps=bn_eps)
        self.in_features = in_features
        self.out_features = out_features

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.bn(self.lin(x))


class MLP(nn.Module):
    """mlp400. The public code feeds MNIST as 3 identical RGB channels (2,352 inputs).

    ``in_channels`` is the channel count the model is *defined* for (3 as in the paper).
    When a 1-channel image arrives at a 3-channel model, the three weight slices are summed
    before the product: the result, and every parameter gradient, is exactly what the
    3-channel model computes on the grey image repeated three times, at a third of the cost.
    ``grey_fold`` keeps one input weight for the three slices (``_fold_input_weight``).
    """

    def __init__(self, num_classes: int, in_channels: int = 3, input_size: int = 28,
                 width: int = 400, bn_eps: float = 1e-6, grey_fold: str | None = None) -> None:
        super().__init__()
        if grey_fold not in (None, *FOLDS):
            raise ValueError(f"unknown grey fold '{grey_fold}'; valid: {', '.join(FOLDS)}")
        self.in_channels = in_channels
        self.input_size = input_size
        self.input = FCBlock(in_channels * input_size * input_size, width, bn_eps)
        self.hidden1 = FCBlock(width, width, bn_eps)
        self.dim_out = width
        self.fc: nn.Module = FinalBlock(width, num_classes, bn_eps)
        self.grey_fold = grey_fold if in_channels > 1 else None
        if self.grey_fold:
            self._fold_input_weight()

    def _fold_input_weight(self) -> None:
        """Keep one input weight for the C channel slices, which on a grey image repeated over C channels
        all receive the same gradient g.

        ``sgd``: the parameter is W_eff = sum of the slices. SGD (momentum, Nesterov, weight decay) is
        linear, so W_eff follows SGD exactly with gradient C*g: a ScaleGrad in the forward pass scales
        its gradient by C. ``adam``: the parameter is Q = W_eff / C and the forward pass uses C*Q with the
        gradient g unscaled (ScaleValue). Adam without weight decay works per element and the slices'
        moments see the same g, so every slice moves by the same step D and Q = W_eff(0)/C + D follows
        Adam exactly (not with weight decay, which pulls each slice by its own value).
        Either way the forward pass and the training trajectory equal the C-channel model's (in exact
        arithmetic; in floats, within rounding), while the optimizer and the first layer touch a C-th of
        the memory, and no sum of the slices is needed. The scalings are autograd functions in the
        forward pass (not tensor hooks), so they survive pickling (checkpoints) and deep copies.
        """
        w = self.input.lin.weight.detach()
        c = self.in_channels
        folded = w.view(w.shape[0], c, -1).sum(1).clone()
        if self.grey_fold == "adam":
            folded = folded / c
        lin = nn.Linear(folded.shape[1], folded.shape[0], bias=False)
        lin.weight = nn.Parameter(folded)
        self.input.lin = lin
        self.input.in_features = folded.shape[1]

    def folded(self) -> dict[str, int]:
        """Parameters that stand for the sum of ``c`` slices with identical gradients: name -> c (the SGD fold)."""
        return {"input.lin.weight": self.in_channels} if self.grey_fold == "sgd" else {}

    def per_slice(self) -> dict[str, int]:
        """Parameters that stand for each one of ``c`` identical slices (the Adam fold): name -> c. A quantity
        summed over the 3-channel model's parameters counts such a parameter's share ``c`` times."""
        return {"input.lin.weight": self.in_channels} if self.grey_fold == "adam" else {}

    def _input_weight(self, x_channels: int) -> torch.Tensor | None:
        if self.grey_fold:
            if x_channels != 1:
                raise ValueError("a grey-folded mlp400 takes 1-channel input")
            scale = ScaleGrad if self.grey_fold == "sgd" else ScaleValue
            return scale.apply(self.input.lin.weight, self.in_channels)
        if x_channels == self.in_channels:
            return None
        if x_channels == 1:
            w = self.input.lin.weight
            return w.view(w.shape[0], self.in_channels, -1).sum(1)
        raise ValueError(f"mlp400 built for {self.in_channels} channels got {x_channels}")

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Penultimate features (after the second block)."""
        w = self._input_weight(x.shape[1])
        out = self.input(x.flatten(1), w)
        return self.hidden1(out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.features(x))
