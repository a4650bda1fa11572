"""Wide ResNets (Zagoruyko & Komodakis 2016): pre-activation blocks, depth = 6n + 4, widen k.

Parameter names follow the reference implementation used by CRD/RepDistiller
(`block1.layer.0.bn1`, `convShortcut`, final `bn1`), so published wrn_40_2 teachers load as they
are. No in-place activations: forward hooks by module name must see unmodified outputs.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from kdcore.models.registry import register
from kdcore.models.zoo._common import check_classes, image_shape


class WideBasicBlock(nn.Module):
    """BN-ReLU-conv3x3-BN-ReLU-[dropout]-conv3x3, plus identity or a 1x1 conv shortcut."""

    def __init__(self, in_planes: int, out_planes: int, stride: int, dropout: float = 0.0):
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_planes)
        self.relu1 = nn.ReLU()
        self.conv1 = nn.Conv2d(in_planes, out_planes, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_planes)
        self.relu2 = nn.ReLU()
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.conv2 = nn.Conv2d(out_planes, out_planes, 3, stride=1, padding=1, bias=False)
        self.equal_in_out = in_planes == out_planes and stride == 1
        self.convShortcut: nn.Module | None = None
        if not self.equal_in_out:
            self.convShortcut = nn.Conv2d(in_planes, out_planes, 1, stride=stride, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        act = self.relu1(self.bn1(x))
        out = self.relu2(self.bn2(self.conv1(act)))
        out = self.conv2(self.dropout(out))
        # As in the reference: a projection shortcut takes the pre-activated input.
        shortcut = x if self.convShortcut is None else self.convShortcut(act)
        return shortcut + out


class NetworkBlock(nn.Module):
    """A group of n blocks at one width; `layer` keeps the reference's parameter names."""

    def __init__(self, n: int, in_planes: int, out_planes: int, stride: int, dropout: float = 0.0):
        super().__init__()
        self.layer = nn.Sequential(
            *[
                WideBasicBlock(
                    in_planes if i == 0 else out_planes,
                    out_planes,
                    stride if i == 0 else 1,
                    dropout,
                )
                for i in range(n)
            ]
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layer(x)


class WideResNet(nn.Module):
    """[unsqueeze] → conv1 → block1 → block2 (/2) → block3 (/2) → bn1-relu → pool → fc."""

    def __init__(
        self,
        input_shape: Sequence[int],
        num_classes: int,
        depth: int,
        widen_factor: int,
        dropout: float = 0.0,
        arch: str = "wrn",
    ):
        super().__init__()
        if (depth - 4) % 6 != 0 or depth < 10:
            raise ValueError(f"{arch}: depth must be 6n+4 (10, 16, 22, ...), got {depth}")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"{arch}: dropout must be in [0, 1), got {dropout}")
        n = (depth - 4) // 6
        widths = [16, 16 * widen_factor, 32 * widen_factor, 64 * widen_factor]
        c, _, _, self.add_channel = image_shape(arch, input_shape)
        self.conv1 = nn.Conv2d(c, widths[0], 3, stride=1, padding=1, bias=False)
        self.block1 = NetworkBlock(n, widths[0], widths[1], 1, dropout)
        self.block2 = NetworkBlock(n, widths[1], widths[2], 2, dropout)
        self.block3 = NetworkBlock(n, widths[2], widths[3], 2, dropout)
        self.bn1 = nn.BatchNorm2d(widths[3])
        self.relu = nn.ReLU()
        self.pool = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(1))
        self.fc = nn.Linear(widths[3], num_classes)
        self.feature_dim = widths[3]
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Linear):
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.add_channel:  # a Python bool fixed at build time: trace/export friendly
            x = x.unsqueeze(1)
        x = self.block3(self.block2(self.block1(self.conv1(x))))
        return self.fc(self.pool(self.relu(self.bn1(x))))


def _factory(name: str, depth: int, widen_factor: int) -> None:
    def build(input_shape: tuple[int, ...], num_classes: int, *, dropout: float = 0.0) -> nn.Module:
        check_classes(name, num_classes)
        return WideResNet(input_shape, num_classes, depth, widen_factor, float(dropout), name)

    build.__name__ = build.__qualname__ = name
    build.__doc__ = f"Wide ResNet, depth {depth}, widen factor {widen_factor}."
    register(name)(build)


_factory("wrn_16_2", 16, 2)
_factory("wrn_40_2", 40, 2)
