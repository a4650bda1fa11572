"""A small MobileNet-style student ("mobilenet_tiny"): depthwise-separable convolution blocks.

stem (3x3 conv-BN-ReLU) → block{i} (3x3 depthwise conv-BN-ReLU, 1x1 pointwise conv-BN-ReLU) →
pool (global average + flatten) → fc. Blocks after the first halve the spatial size with a
stride-2 depthwise conv while at least 2 positions per side remain, so the same spec runs on
8x8 digits and 32x32 CIFAR. No in-place activations (forward hooks see unmodified outputs).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence

import torch
from torch import nn

from kdcore.models.registry import register
from kdcore.models.zoo._common import check_classes, image_shape, int_list
from kdcore.models.zoo.convnets import AddChannel


def _conv_bn_relu(conv: nn.Conv2d) -> nn.Sequential:
    return nn.Sequential(
        OrderedDict(conv=conv, bn=nn.BatchNorm2d(conv.out_channels), relu=nn.ReLU())
    )


class SeparableBlock(nn.Module):
    """3x3 depthwise conv (groups = channels, optionally stride 2) then a 1x1 pointwise conv,
    each followed by BN and ReLU."""

    def __init__(self, in_channels: int, out_channels: int, stride: int):
        super().__init__()
        self.depthwise = _conv_bn_relu(
            nn.Conv2d(
                in_channels, in_channels, 3, stride, padding=1, groups=in_channels, bias=False
            )
        )
        self.pointwise = _conv_bn_relu(nn.Conv2d(in_channels, out_channels, 1, bias=False))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pointwise(self.depthwise(x))


class MobileNetTiny(nn.Sequential):
    """[unsqueeze] → stem → block{i} … → pool (GAP+flatten) → fc."""

    def __init__(
        self,
        input_shape: Sequence[int],
        num_classes: int,
        channels: list[int],
        stem: int,
    ):
        c, h, w, add_channel = image_shape("mobilenet_tiny", input_shape)
        layers: OrderedDict[str, nn.Module] = OrderedDict()
        if add_channel:
            layers["unsqueeze"] = AddChannel()
        layers["stem"] = _conv_bn_relu(nn.Conv2d(c, stem, 3, padding=1, bias=False))
        size, width = min(h, w), stem
        for i, out in enumerate(channels, start=1):
            stride = 2 if i > 1 and size >= 4 else 1  # keep at least 2x2 positions
            size = (size + stride - 1) // stride
            layers[f"block{i}"] = SeparableBlock(width, out, stride)
            width = out
        layers["pool"] = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(1))
        layers["fc"] = nn.Linear(width, num_classes)
        super().__init__(layers)
        self.feature_dim = width
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # Named `x` like every zoo model, so export's dynamic_shapes={"x": ...} works.
        return super().forward(x)


@register("mobilenet_tiny")
def mobilenet_tiny(
    input_shape: tuple[int, ...],
    num_classes: int,
    *,
    channels: Sequence[int] = (32, 64, 128),
    stem: int = 16,
) -> nn.Module:
    check_classes("mobilenet_tiny", num_classes)
    widths = int_list("mobilenet_tiny", "channels", channels)
    stem_width = int_list("mobilenet_tiny", "stem", [stem])[0]
    return MobileNetTiny(input_shape, num_classes, widths, stem_width)
