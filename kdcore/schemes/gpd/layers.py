"""Layers whose dynamic-teacher form is not a plain torch layer with tiled weights.

All of them compute f(r·z)/r (gpd.md §1): the DT's hidden state is (1/r)·[h; …; h], so
multiplying by r restores the student's scale, f acts on it exactly as in the student, and
dividing by r returns to the DT's convention. Each is a subclass of the torch layer it replaces,
with the same state-dict keys, so the hard strategy (gpd.md §2) slices it without rescaling.
"""

from __future__ import annotations

import copy

import torch
from torch import nn


class _Scaled:
    """f(r·z)/r around the torch layer's own forward."""

    gpd_ratio: int

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        r = self.gpd_ratio
        return super().forward(x * r) / r  # type: ignore[misc]

    def extra_repr(self) -> str:
        inner = super().extra_repr()  # type: ignore[misc]
        return f"{inner}, gpd_ratio={self.gpd_ratio}" if inner else f"gpd_ratio={self.gpd_ratio}"


class GPDBatchNorm1d(_Scaled, nn.BatchNorm1d):
    """nn.BatchNorm1d computing BN(r·z)/r; same state-dict keys as the student's layer.

    γ and β are replicated unscaled and the running statistics stay on the student's scale. It is
    exact in train mode too: every replica's channel sees the same batch as the student's.
    """

    def __init__(self, num_features: int, gpd_ratio: int, **kwargs: object) -> None:
        nn.BatchNorm1d.__init__(self, num_features, **kwargs)  # type: ignore[arg-type]
        self.gpd_ratio = int(gpd_ratio)


class GPDBatchNorm2d(_Scaled, nn.BatchNorm2d):
    """nn.BatchNorm2d computing BN(r·z)/r; same state-dict keys as the student's layer."""

    def __init__(self, num_features: int, gpd_ratio: int, **kwargs: object) -> None:
        nn.BatchNorm2d.__init__(self, num_features, **kwargs)  # type: ignore[arg-type]
        self.gpd_ratio = int(gpd_ratio)


class GPDLayerNorm(_Scaled, nn.LayerNorm):
    """nn.LayerNorm computing LN(r·z)/r (LN is scale-invariant only up to its ε, so the
    rescaling is needed). The r replicas of the last axis have the student's mean and variance,
    so γ, β replicated unscaled give the student's values on every replica."""

    def __init__(self, normalized_shape: int, gpd_ratio: int, **kwargs: object) -> None:
        nn.LayerNorm.__init__(self, normalized_shape, **kwargs)  # type: ignore[arg-type]
        self.gpd_ratio = int(gpd_ratio)


class _ScaledGroupedConv:
    """conv(r·z)/r = conv(z) + b/r for a grouped convolution whose W and b are replicated
    unscaled (gpd.md §1 and §2: the student's depthwise W and b are the leading blocks as is).
    Written with b/r rather than scaling the input: the same value, one less activation-sized
    multiplication."""

    gpd_ratio: int
    weight: torch.Tensor
    bias: torch.Tensor | None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        bias = None if self.bias is None else self.bias / self.gpd_ratio
        return self._conv_forward(x, self.weight, bias)  # type: ignore[attr-defined]

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, gpd_ratio={self.gpd_ratio}"  # type: ignore[misc]


class GPDConv1d(_ScaledGroupedConv, nn.Conv1d):
    """A grouped nn.Conv1d (groups r·g) computing conv(r·z)/r; the student's state-dict keys."""

    def __init__(self, *args: object, gpd_ratio: int, **kwargs: object) -> None:
        nn.Conv1d.__init__(self, *args, **kwargs)  # type: ignore[arg-type]
        self.gpd_ratio = int(gpd_ratio)


class GPDConv2d(_ScaledGroupedConv, nn.Conv2d):
    """A grouped nn.Conv2d (groups r·g) computing conv(r·z)/r; the student's state-dict keys."""

    def __init__(self, *args: object, gpd_ratio: int, **kwargs: object) -> None:
        nn.Conv2d.__init__(self, *args, **kwargs)  # type: ignore[arg-type]
        self.gpd_ratio = int(gpd_ratio)


# Element-wise activations that are not positively homogeneous (gpd.md §1: "GELU or any
# non-homogeneous activation: f(r·z)/r"). They hold no tensors; `scaled_activation` swaps the
# class of a copy, so every constructor argument (approximate, inplace, alpha…) carries over.


class GPDGELU(_Scaled, nn.GELU):
    """nn.GELU computing GELU(r·z)/r."""

    gpd_ratio = 1


class GPDSiLU(_Scaled, nn.SiLU):
    """nn.SiLU computing SiLU(r·z)/r."""

    gpd_ratio = 1


class GPDTanh(_Scaled, nn.Tanh):
    """nn.Tanh computing tanh(r·z)/r."""

    gpd_ratio = 1


class GPDSigmoid(_Scaled, nn.Sigmoid):
    """nn.Sigmoid computing σ(r·z)/r."""

    gpd_ratio = 1


class GPDELU(_Scaled, nn.ELU):
    """nn.ELU computing ELU(r·z)/r."""

    gpd_ratio = 1


class GPDReLU6(_Scaled, nn.ReLU6):
    """nn.ReLU6 computing ReLU6(r·z)/r (the clip at 6 breaks homogeneity)."""

    gpd_ratio = 1


class GPDHardswish(_Scaled, nn.Hardswish):
    """nn.Hardswish computing hardswish(r·z)/r."""

    gpd_ratio = 1


class GPDMish(_Scaled, nn.Mish):
    """nn.Mish computing mish(r·z)/r."""

    gpd_ratio = 1


SCALED_ACTIVATIONS: dict[type[nn.Module], type[nn.Module]] = {
    nn.GELU: GPDGELU,
    nn.SiLU: GPDSiLU,
    nn.Tanh: GPDTanh,
    nn.Sigmoid: GPDSigmoid,
    nn.ELU: GPDELU,
    nn.ReLU6: GPDReLU6,
    nn.Hardswish: GPDHardswish,
    nn.Mish: GPDMish,
}


def scaled_activation(m: nn.Module, ratio: int) -> nn.Module:
    """A copy of activation `m` computing f(r·z)/r (its exact class must be in the table: a
    subclass may have its own forward, which the swap would lose)."""
    cls = SCALED_ACTIVATIONS.get(type(m))
    if cls is None:
        raise ValueError(f"GPD has no f(r·z)/r form for {type(m).__name__}")
    new = copy.deepcopy(m)
    new.__class__ = cls
    new.gpd_ratio = int(ratio)  # type: ignore[assignment]
    return new
