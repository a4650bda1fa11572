"""CIFAR-style ResNets (He et al. 2016) as used in CRD/RepDistiller teacher-student benchmarks.

depth = 6n + 2 with BasicBlocks; widths 16/16/32/64, or 32/64/128/256 for the "x4" variants
(resnet8x4, resnet32x4). The 8x8 average pool of the original is an adaptive pool here, so
the nets run on any image size (1x8x8 digits as well as 3x32x32). Parameter names match
RepDistiller's, so its published teacher checkpoints load as they are. No in-place activations:
forward hooks attached by module name (e.g. `layer2`) must see unmodified outputs.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from kdcore.models.registry import register
from kdcore.models.zoo._common import check_classes, image_shape


class BasicBlock(nn.Module):
    """conv3x3-BN-ReLU-conv3x3-BN plus a shortcut (1x1 conv + BN when the shape changes)."""

    def __init__(self, in_planes: int, planes: int, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu1 = nn.ReLU()
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.relu2 = nn.ReLU()
        self.downsample: nn.Module = nn.Identity()
        if stride != 1 or in_planes != planes:
            self.downsample = nn.Sequential(
                nn.Conv2d(in_planes, planes, 1, stride=stride, bias=False),
                nn.BatchNorm2d(planes),
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu1(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu2(out + self.downsample(x))


class CifarResNet(nn.Module):
    """[unsqueeze] → conv1-bn1-relu → layer1 → layer2 (/2) → layer3 (/2) → pool → fc."""

    def __init__(
        self,
        input_shape: Sequence[int],
        num_classes: int,
        depth: int,
        widths: Sequence[int],
        arch: str = "resnet",
    ):
        super().__init__()
        if (depth - 2) % 6 != 0 or depth < 8:
            raise ValueError(f"{arch}: depth must be 6n+2 (8, 14, 20, ...), got {depth}")
        n = (depth - 2) // 6
        c, _, _, self.add_channel = image_shape(arch, input_shape)
        self.conv1 = nn.Conv2d(c, widths[0], 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(widths[0])
        self.relu = nn.ReLU()
        self.layer1 = self._make_layer(widths[0], widths[1], n, stride=1)
        self.layer2 = self._make_layer(widths[1], widths[2], n, stride=2)
        self.layer3 = self._make_layer(widths[2], widths[3], n, stride=2)
        self.pool = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(1))
        self.fc = nn.Linear(widths[3], num_classes)
        self.feature_dim = widths[3]
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    @staticmethod
    def _make_layer(in_planes: int, planes: int, blocks: int, stride: int) -> nn.Sequential:
        layers = [BasicBlock(in_planes, planes, stride)]
        layers += [BasicBlock(planes, planes) for _ in range(blocks - 1)]
        return nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.add_channel:  # a Python bool fixed at build time: trace/export friendly
            x = x.unsqueeze(1)
        x = self.relu(self.bn1(self.conv1(x)))
        x = self.layer3(self.layer2(self.layer1(x)))
        return self.fc(self.pool(x))


_THIN = (16, 16, 32, 64)
_WIDE = (32, 64, 128, 256)


def _factory(name: str, depth: int, widths: Sequence[int]) -> None:
    def build(input_shape: tuple[int, ...], num_classes: int) -> nn.Module:
        check_classes(name, num_classes)
        return CifarResNet(input_shape, num_classes, depth, widths, arch=name)

    build.__name__ = build.__qualname__ = name
    build.__doc__ = f"CIFAR ResNet, depth {depth}, widths {'/'.join(map(str, widths))}."
    register(name)(build)


for _depth in (8, 14, 20, 32, 56, 110):
    _factory(f"resnet{_depth}", _depth, _THIN)
_factory("resnet8x4", 8, _WIDE)
_factory("resnet32x4", 32, _WIDE)
