"""Layers whose dynamic-teacher form is not a plain torch layer with tiled weights."""

from __future__ import annotations

import torch
from torch import nn


class _ScaledBN:
    """BN(r·z)/r, the gpd.md §1 BatchNorm rule.

    The DT's hidden state is (1/r)·[h; …; h]; multiplying by r restores the student's scale, so
    γ and β are replicated unscaled and the running statistics stay on the student's scale (the
    hard strategy of gpd.md §2 then slices γ, β and the statistics without rescaling). It is exact
    in train mode too: every replica's channel sees the same batch as the student's channel.
    """

    gpd_ratio: int

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        r = self.gpd_ratio
        return super().forward(x * r) / r  # type: ignore[misc]

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, gpd_ratio={self.gpd_ratio}"  # type: ignore[misc]


class GPDBatchNorm1d(_ScaledBN, nn.BatchNorm1d):
    """nn.BatchNorm1d computing BN(r·z)/r; same state-dict keys as the student's layer."""

    def __init__(self, num_features: int, gpd_ratio: int, **kwargs: object) -> None:
        nn.BatchNorm1d.__init__(self, num_features, **kwargs)  # type: ignore[arg-type]
        self.gpd_ratio = int(gpd_ratio)


class GPDBatchNorm2d(_ScaledBN, nn.BatchNorm2d):
    """nn.BatchNorm2d computing BN(r·z)/r; same state-dict keys as the student's layer."""

    def __init__(self, num_features: int, gpd_ratio: int, **kwargs: object) -> None:
        nn.BatchNorm2d.__init__(self, num_features, **kwargs)  # type: ignore[arg-type]
        self.gpd_ratio = int(gpd_ratio)
