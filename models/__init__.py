"""Model factory: build a model of the paper by name."""
from __future__ import annotations

from torch import nn

from models.mlp import MLP
from models.resnet import resnet18, resnet32, resnet34

MODELS = ("mlp400", "resnet18", "resnet32", "resnet34")
_RESNETS = {"resnet18": resnet18, "resnet32": resnet32, "resnet34": resnet34}


def build_model(name: str, num_classes: int, in_channels: int = 3, input_size: int = 28,
                grey_fold: str | None = None) -> nn.Module:
    """Return a freshly initialised model; unknown names list the valid ones.

    ``grey_fold`` ("sgd" or "adam"): the data is 1-channel and the optimizer is SGD, or Adam without weight
    decay, so mlp400 may keep its 3-channel input weight folded (equivalent, see MLP._fold_input_weight). The
    ResNets ignore it; ``input_size`` picks their stem (ImageNet layout from 64 pixels up)."""
    if name == "mlp400":
        return MLP(num_classes, in_channels=in_channels, input_size=input_size, width=400, grey_fold=grey_fold)
    if name in _RESNETS:
        return _RESNETS[name](num_classes, in_channels=in_channels, input_size=input_size)
    raise ValueError(f"unknown model '{name}'; valid: {', '.join(MODELS)}")
