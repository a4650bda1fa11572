"""A multilayer perceptron: the baseline student for tabular and small flattened inputs."""

from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Sequence

import torch
from torch import nn

from kdcore.models.registry import register
from kdcore.models.zoo._common import check_classes, int_list


class MLP(nn.Sequential):
    """flatten → (fc{i} → act{i} [→ drop{i}])* → head; names are stable hook points."""

    def __init__(
        self, in_features: int, num_classes: int, hidden: Sequence[int], dropout: float = 0.0
    ):
        layers: OrderedDict[str, nn.Module] = OrderedDict(flatten=nn.Flatten(1))
        width = in_features
        for i, h in enumerate(hidden, start=1):
            layers[f"fc{i}"] = nn.Linear(width, h)
            layers[f"act{i}"] = nn.ReLU()
            if dropout > 0:
                layers[f"drop{i}"] = nn.Dropout(dropout)
            width = h
        layers["head"] = nn.Linear(width, num_classes)
        super().__init__(layers)
        self.feature_dim = width

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # Named `x` like every zoo model, so export's dynamic_shapes={"x": ...} works.
        return super().forward(x)


@register("mlp")
def mlp(
    input_shape: tuple[int, ...],
    num_classes: int,
    *,
    hidden: Sequence[int] = (256,),
    dropout: float = 0.0,
) -> nn.Module:
    check_classes("mlp", num_classes)
    if not input_shape or any(int(d) < 1 for d in input_shape):
        raise ValueError(f"mlp: input_shape {tuple(input_shape)} has a non-positive dimension")
    if not 0.0 <= float(dropout) < 1.0:
        raise ValueError(f"mlp: dropout must be in [0, 1), got {dropout}")
    widths = int_list("mlp", "hidden", hidden, allow_empty=True)
    return MLP(math.prod(int(d) for d in input_shape), num_classes, widths, float(dropout))
