"""Plain conv-BN-ReLU stacks: small, fast students for sequences ("conv1d") and images ("convnet").

Downsampling is decided at build time from the data's spatial size, so the same spec works
for 8x8 digits and 32x32 CIFAR without a pooling layer collapsing the map to nothing.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence

import torch
from torch import nn

from kdcore.models.registry import register
from kdcore.models.zoo._common import check_classes, image_shape, int_list, sequence_shape


class AddChannel(nn.Module):
    """Turn (B, *spatial) into (B, 1, *spatial) for single-channel data given without a C axis."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.unsqueeze(1)


def _stack(
    kind: str,
    in_channels: int,
    size: int,
    channels: list[int],
    kernel_size: int,
    num_classes: int,
    add_channel: bool,
) -> OrderedDict[str, nn.Module]:
    conv, bn, down, gap = (
        (nn.Conv1d, nn.BatchNorm1d, nn.MaxPool1d, nn.AdaptiveAvgPool1d)
        if kind == "1d"
        else (nn.Conv2d, nn.BatchNorm2d, nn.MaxPool2d, nn.AdaptiveAvgPool2d)
    )
    layers: OrderedDict[str, nn.Module] = OrderedDict()
    if add_channel:
        layers["unsqueeze"] = AddChannel()
    width = in_channels
    for i, out in enumerate(channels, start=1):
        layers[f"block{i}"] = nn.Sequential(
            OrderedDict(
                conv=conv(width, out, kernel_size, padding=kernel_size // 2, bias=False),
                bn=bn(out),
                relu=nn.ReLU(),
            )
        )
        width = out
        # Halve only while the result keeps at least 2 positions per side.
        if i < len(channels) and size >= 4:
            layers[f"down{i}"] = down(2)
            size //= 2
    layers["pool"] = nn.Sequential(gap(1), nn.Flatten(1))
    layers["fc"] = nn.Linear(width, num_classes)
    return layers


def _init(model: nn.Module) -> None:
    for m in model.modules():
        if isinstance(m, (nn.Conv1d, nn.Conv2d)):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        elif isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d)):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)


class ConvNet1d(nn.Sequential):
    """[unsqueeze] → block{i} (conv-BN-ReLU) [→ down{i}] … → pool (GAP+flatten) → fc."""

    def __init__(
        self,
        input_shape: Sequence[int],
        num_classes: int,
        channels: list[int],
        kernel_size: int = 3,
    ):
        c, length, add_channel = sequence_shape("conv1d", input_shape)
        super().__init__(_stack("1d", c, length, channels, kernel_size, num_classes, add_channel))
        self.feature_dim = channels[-1]
        _init(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # Named `x` like every zoo model, so export's dynamic_shapes={"x": ...} works.
        return super().forward(x)


class ConvNet2d(nn.Sequential):
    """[unsqueeze] → block{i} (conv-BN-ReLU) [→ down{i}] … → pool (GAP+flatten) → fc."""

    def __init__(
        self,
        input_shape: Sequence[int],
        num_classes: int,
        channels: list[int],
        kernel_size: int = 3,
    ):
        c, h, w, add_channel = image_shape("convnet", input_shape)
        super().__init__(
            _stack("2d", c, min(h, w), channels, kernel_size, num_classes, add_channel)
        )
        self.feature_dim = channels[-1]
        _init(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # Named `x` like every zoo model, so export's dynamic_shapes={"x": ...} works.
        return super().forward(x)


def _kernel(arch: str, kernel_size: int) -> int:
    k = int(kernel_size)
    if k < 1 or k % 2 == 0:
        raise ValueError(f"{arch}: kernel_size must be a positive odd integer, got {kernel_size}")
    return k


@register("conv1d")
def conv1d(
    input_shape: tuple[int, ...],
    num_classes: int,
    *,
    channels: Sequence[int] = (16, 32),
    kernel_size: int = 3,
) -> nn.Module:
    check_classes("conv1d", num_classes)
    return ConvNet1d(
        input_shape,
        num_classes,
        int_list("conv1d", "channels", channels),
        _kernel("conv1d", kernel_size),
    )


@register("convnet")
def convnet(
    input_shape: tuple[int, ...],
    num_classes: int,
    *,
    channels: Sequence[int] = (32, 64),
    kernel_size: int = 3,
) -> nn.Module:
    check_classes("convnet", num_classes)
    return ConvNet2d(
        input_shape,
        num_classes,
        int_list("convnet", "channels", channels),
        _kernel("convnet", kernel_size),
    )
