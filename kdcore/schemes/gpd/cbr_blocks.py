"""The CBR branch blocks (gpd.md §3): one layer as parallel linear branches that merge exactly.

Each branch is bias-free and has a per-output-channel scale; the block's kernel is the scaled sum
of the branch kernels and its forward is ONE convolution (or matmul) with that merged kernel plus
the block's single bias. Training therefore sees an over-parameterised layer (richer optimisation
dynamics) while the function stays that of a single layer, and `to_conv` / `to_linear` fold a
block back into a plain layer with the original state-dict keys and shapes.

Branches of `BranchConv2d` (3×3, stride 1, padding 1, groups 1), in `scale` row order:

0. `w_3x3`: the original 3×3 kernel;
1. `w_1x1`: a 1×1 kernel, which is the 3×3 kernel with only the centre tap (padding 1 on the
   3×3 side equals padding 0 on the 1×1 side);
2. `w_avg`: 1×1 then 3×3 average pooling (stride 1, padding 1, count_include_pad): the zero
   padding commutes with a bias-free 1×1, so every tap of the merged kernel is W/9;
3. `w_mid` then `w_mid3x3`: 1×1 (C_in→C_mid) then 3×3 (C_mid→C_out), merged K = W3·W1;
4. `w_dw` then `w_pw`: depthwise 3×3 then pointwise 1×1, merged K[o, i] = P[o, i]·D[i].

`BranchDWConv2d` (depthwise 3×3, stride 1, padding 1): the original kernel, a per-channel 1×1,
a per-channel 1×1 then average pooling, a per-channel 1×1 then a depthwise 3×3.

`BranchLinear`: branch 0 the original W, branch 1 a product `w_b @ w_a` (C_in→C_mid→C_out).

Initialisation: `finetune` keeps the source layer's weight in branch 0 with scale 1 and every
other branch random with scale 0 (the function is exactly the source layer's, and the zero scales
still get gradients because their branches are random); `fresh` draws every branch with PyTorch's
default init for its shape and sets one scale per branch so that each branch contributes 1/B of
the mean square of the source layer's weight (so a freshly built zoo model keeps its own init
statistics, e.g. ResNets' Kaiming fan-out; without a source layer: PyTorch's default 1/(3·fan_in)).

The blocks live apart from the model-level swap (`cbr.py`) so that their IR rules
(`cbr_rules.py`) can import them without importing the swap, which itself needs the rule table.
"""

from __future__ import annotations

import math
from typing import Any, Literal, TypeGuard

import torch
import torch.nn.functional as F
from torch import Tensor, nn

Init = Literal["finetune", "fresh"]

CONV_BRANCHES = ("3x3", "1x1", "1x1-avg", "1x1-3x3", "dw-pw")
LINEAR_BRANCHES = ("W", "W_b·W_a")


def _default_(t: Tensor) -> Tensor:
    """PyTorch's default Linear/Conv weight init (kaiming uniform, a=√5) for any shape."""
    return nn.init.kaiming_uniform_(t, a=math.sqrt(5))


def _default_bias_(b: Tensor, fan_in: int) -> Tensor:
    bound = 1.0 / math.sqrt(fan_in) if fan_in > 0 else 0.0
    return nn.init.uniform_(b, -bound, bound)


def _fresh_scales(kernels: list[Tensor], target: float) -> Tensor:
    """One scale per branch so that each branch's merged kernel has mean square target/B."""
    b = len(kernels)
    vals = [math.sqrt(target / (b * max(k.pow(2).mean().item(), 1e-30))) for k in kernels]
    return torch.tensor(vals)


def _start_from(block: Any, layer: nn.Conv2d | nn.Linear, original: Tensor, init: Init) -> Any:
    """Initialise `block` from `layer`: `finetune` puts the layer's weight in the `original`
    branch with scale 1 and the other branches at scale 0 (the same function); `fresh` draws
    every branch anew at the mean square of the layer's weight. The bias is the layer's."""
    w = layer.weight
    with torch.no_grad():
        if init == "finetune":
            original.copy_(w)
            block.scale.zero_()
            block.scale[0].fill_(1.0)
        elif init == "fresh":
            block.reset_parameters(target=w.detach().pow(2).mean().item())
        else:
            raise ValueError(f"CBR init must be 'finetune' or 'fresh', got {init!r}")
        if layer.bias is not None:
            assert block.bias is not None
            block.bias.copy_(layer.bias)
    return block.train(layer.training)


def _same_3x3(m: nn.Module) -> TypeGuard[nn.Conv2d]:
    return (
        type(m) is nn.Conv2d
        and m.kernel_size == (3, 3)
        and m.stride == (1, 1)
        and m.padding in ((1, 1), "same")
        and m.dilation == (1, 1)
        and m.padding_mode == "zeros"
    )


def conv_eligible(m: nn.Module) -> bool:
    """3×3, stride 1, 'same' zero padding, groups 1: the convs whose branches merge exactly."""
    return _same_3x3(m) and m.groups == 1


def dw_eligible(m: nn.Module) -> bool:
    """The depthwise form of `conv_eligible`: groups == in == out channels (> 1)."""
    return (
        _same_3x3(m) and m.groups > 1 and m.groups == m.in_channels == m.out_channels
    )


class BranchConv2d(nn.Module):
    """A 3×3 stride-1 conv (padding 1, groups 1) as five scaled branches, merged in `forward`."""

    n_branches = len(CONV_BRANCHES)

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        bias: bool = True,
        mid_channels: int | None = None,
    ):
        super().__init__()
        self.in_channels, self.out_channels = in_channels, out_channels
        self.mid_channels = in_channels if mid_channels is None else mid_channels
        ci, co, cm = in_channels, out_channels, self.mid_channels
        self.w_3x3 = nn.Parameter(torch.empty(co, ci, 3, 3))
        self.w_1x1 = nn.Parameter(torch.empty(co, ci, 1, 1))
        self.w_avg = nn.Parameter(torch.empty(co, ci, 1, 1))
        self.w_mid = nn.Parameter(torch.empty(cm, ci, 1, 1))
        self.w_mid3x3 = nn.Parameter(torch.empty(co, cm, 3, 3))
        self.w_dw = nn.Parameter(torch.empty(ci, 1, 3, 3))
        self.w_pw = nn.Parameter(torch.empty(co, ci, 1, 1))
        self.scale = nn.Parameter(torch.empty(self.n_branches, co))
        self.bias = nn.Parameter(torch.empty(co)) if bias else None
        self.reset_parameters()

    def reset_parameters(self, target: float | None = None) -> None:
        """`fresh` init: every branch random, scales matching `target` mean square."""
        with torch.no_grad():
            for w in (self.w_3x3, self.w_1x1, self.w_avg, self.w_mid, self.w_mid3x3):
                _default_(w)
            _default_(self.w_dw)
            _default_(self.w_pw)
            if target is None:
                target = 1.0 / (3.0 * self.in_channels * 9)  # nn.Conv2d's default init
            s = _fresh_scales(self.kernels(), target)
            self.scale.copy_(s[:, None].expand_as(self.scale))
            if self.bias is not None:
                _default_bias_(self.bias, self.in_channels * 9)

    @classmethod
    def from_conv(cls, conv: nn.Conv2d, init: Init = "finetune") -> BranchConv2d:
        """A block computing `conv` exactly (`finetune`) or a fresh one of its shape."""
        if not conv_eligible(conv):
            raise ValueError(f"BranchConv2d needs a 3x3 stride-1 padding-1 groups-1 conv: {conv}")
        w = conv.weight
        new = cls(conv.in_channels, conv.out_channels, bias=conv.bias is not None)
        new = new.to(device=w.device, dtype=w.dtype)
        return _start_from(new, conv, new.w_3x3, init)

    def kernels(self) -> list[Tensor]:
        """Each branch's equivalent 3×3 kernel (C_out, C_in, 3, 3), unscaled."""
        k_1x1 = F.pad(self.w_1x1, [1, 1, 1, 1])
        k_avg = (self.w_avg / 9.0).expand(-1, -1, 3, 3)
        k_mid = torch.einsum("omhw,mi->oihw", self.w_mid3x3, self.w_mid[:, :, 0, 0])
        k_dwpw = self.w_pw * self.w_dw[:, 0][None]  # P[o,i]·D[i,h,w]
        return [self.w_3x3, k_1x1, k_avg, k_mid, k_dwpw]

    def merged_weight(self) -> Tensor:
        """Σ_b scale_b ⊙ kernel_b: the one 3×3 kernel the block computes."""
        out = torch.zeros_like(self.w_3x3)
        for s, k in zip(self.scale, self.kernels(), strict=True):
            out = out + s[:, None, None, None] * k
        return out

    def forward(self, x: Tensor) -> Tensor:
        return F.conv2d(x, self.merged_weight(), self.bias, stride=1, padding=1)

    def branch_forward(self, x: Tensor) -> Tensor:
        """The unmerged block: each branch as its own ops, scaled and summed (proves merging)."""
        s = [v[None, :, None, None] for v in self.scale]
        ys = [
            F.conv2d(x, self.w_3x3, padding=1),
            F.conv2d(x, self.w_1x1),
            F.avg_pool2d(F.conv2d(x, self.w_avg), 3, 1, 1, count_include_pad=True),
            F.conv2d(F.conv2d(x, self.w_mid), self.w_mid3x3, padding=1),
            F.conv2d(F.conv2d(x, self.w_dw, padding=1, groups=self.in_channels), self.w_pw),
        ]
        out = sum(si * y for si, y in zip(s, ys, strict=True))
        assert isinstance(out, Tensor)
        return out if self.bias is None else out + self.bias[None, :, None, None]

    def to_conv(self) -> nn.Conv2d:
        """The merged plain conv (keys `weight`, `bias` as the source conv had)."""
        w = self.w_3x3
        conv = nn.Conv2d(
            self.in_channels, self.out_channels, 3, padding=1, bias=self.bias is not None
        ).to(device=w.device, dtype=w.dtype)
        with torch.no_grad():
            conv.weight.copy_(self.merged_weight())
            if self.bias is not None:
                assert conv.bias is not None
                conv.bias.copy_(self.bias)
        return conv.train(self.training)

    def extra_repr(self) -> str:
        return (
            f"{self.in_channels}, {self.out_channels}, mid={self.mid_channels}, "
            f"branches={CONV_BRANCHES}, bias={self.bias is not None}"
        )


class BranchLinear(nn.Module):
    """A Linear as the scaled sum of W and a product W_b·W_a (C_in→C_mid→C_out)."""

    n_branches = len(LINEAR_BRANCHES)

    def __init__(
        self,
        in_features: int,
        out_features: int,
        bias: bool = True,
        mid_features: int | None = None,
    ):
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        self.mid_features = in_features if mid_features is None else mid_features
        self.w_orig = nn.Parameter(torch.empty(out_features, in_features))
        self.w_a = nn.Parameter(torch.empty(self.mid_features, in_features))
        self.w_b = nn.Parameter(torch.empty(out_features, self.mid_features))
        self.scale = nn.Parameter(torch.empty(self.n_branches, out_features))
        self.bias = nn.Parameter(torch.empty(out_features)) if bias else None
        self.reset_parameters()

    def reset_parameters(self, target: float | None = None) -> None:
        """`fresh` init: every branch random, scales matching `target` mean square."""
        with torch.no_grad():
            for w in (self.w_orig, self.w_a, self.w_b):
                _default_(w)
            if target is None:
                target = 1.0 / (3.0 * self.in_features)  # nn.Linear's default init
            s = _fresh_scales(self.kernels(), target)
            self.scale.copy_(s[:, None].expand_as(self.scale))
            if self.bias is not None:
                _default_bias_(self.bias, self.in_features)

    @classmethod
    def from_linear(cls, lin: nn.Linear, init: Init = "finetune") -> BranchLinear:
        """A block computing `lin` exactly (`finetune`) or a fresh one of its shape."""
        w = lin.weight
        new = cls(lin.in_features, lin.out_features, bias=lin.bias is not None)
        new = new.to(device=w.device, dtype=w.dtype)
        return _start_from(new, lin, new.w_orig, init)

    def kernels(self) -> list[Tensor]:
        return [self.w_orig, self.w_b @ self.w_a]

    def merged_weight(self) -> Tensor:
        out = torch.zeros_like(self.w_orig)
        for s, k in zip(self.scale, self.kernels(), strict=True):
            out = out + s[:, None] * k
        return out

    def forward(self, x: Tensor) -> Tensor:
        return F.linear(x, self.merged_weight(), self.bias)

    def branch_forward(self, x: Tensor) -> Tensor:
        """The unmerged block: W·x and W_b·(W_a·x), scaled per output and summed."""
        out = self.scale[0] * F.linear(x, self.w_orig) + self.scale[1] * F.linear(
            F.linear(x, self.w_a), self.w_b
        )
        return out if self.bias is None else out + self.bias

    def to_linear(self) -> nn.Linear:
        w = self.w_orig
        lin = nn.Linear(self.in_features, self.out_features, bias=self.bias is not None).to(
            device=w.device, dtype=w.dtype
        )
        with torch.no_grad():
            lin.weight.copy_(self.merged_weight())
            if self.bias is not None:
                lin.bias.copy_(self.bias)
        return lin.train(self.training)

    def extra_repr(self) -> str:
        return (
            f"{self.in_features}, {self.out_features}, mid={self.mid_features}, "
            f"bias={self.bias is not None}"
        )


class BranchDWConv2d(nn.Module):
    """A depthwise 3×3 stride-1 conv (padding 1, groups = channels) as four scaled branches.

    Branches, in `scale` row order: the original 3×3 kernel; a per-channel 1×1 (centre tap);
    a per-channel 1×1 then 3×3 average pooling (every tap W/9); a per-channel 1×1 then a
    depthwise 3×3 (merged: their product). `gpd_ratio` is 1 for a student; the IR rule sets it
    to r and the block then computes conv(r·z)/r (gpd.md §1's depthwise rule), so every tensor
    is replicated unscaled and the student is the DT's leading block (factor 1).
    """

    n_branches = 4

    def __init__(self, channels: int, bias: bool = True, gpd_ratio: int = 1):
        super().__init__()
        self.channels = channels
        self.gpd_ratio = int(gpd_ratio)
        self.w_3x3 = nn.Parameter(torch.empty(channels, 1, 3, 3))
        self.w_1x1 = nn.Parameter(torch.empty(channels, 1, 1, 1))
        self.w_avg = nn.Parameter(torch.empty(channels, 1, 1, 1))
        self.w_mid = nn.Parameter(torch.empty(channels, 1, 1, 1))
        self.w_mid3x3 = nn.Parameter(torch.empty(channels, 1, 3, 3))
        self.scale = nn.Parameter(torch.empty(self.n_branches, channels))
        self.bias = nn.Parameter(torch.empty(channels)) if bias else None
        self.reset_parameters()

    def reset_parameters(self, target: float | None = None) -> None:
        """`fresh` init: every branch random, scales matching `target` mean square."""
        with torch.no_grad():
            for w in (self.w_3x3, self.w_1x1, self.w_avg, self.w_mid, self.w_mid3x3):
                _default_(w)
            if target is None:
                target = 1.0 / (3.0 * 9)  # nn.Conv2d's default init, fan_in 9
            s = _fresh_scales(self.kernels(), target)
            self.scale.copy_(s[:, None].expand_as(self.scale))
            if self.bias is not None:
                _default_bias_(self.bias, 9)

    @classmethod
    def from_conv(cls, conv: nn.Conv2d, init: Init = "finetune") -> BranchDWConv2d:
        """A block computing the depthwise `conv` exactly (`finetune`) or a fresh one."""
        if not dw_eligible(conv):
            raise ValueError(
                f"BranchDWConv2d needs a depthwise 3x3 stride-1 padding-1 conv: {conv}"
            )
        w = conv.weight
        new = cls(conv.in_channels, bias=conv.bias is not None).to(device=w.device, dtype=w.dtype)
        return _start_from(new, conv, new.w_3x3, init)

    def kernels(self) -> list[Tensor]:
        """Each branch's equivalent depthwise 3×3 kernel (C, 1, 3, 3), unscaled."""
        return [
            self.w_3x3,
            F.pad(self.w_1x1, [1, 1, 1, 1]),
            (self.w_avg / 9.0).expand(-1, -1, 3, 3),
            self.w_mid * self.w_mid3x3,
        ]

    def merged_weight(self) -> Tensor:
        out = torch.zeros_like(self.w_3x3)
        for s, k in zip(self.scale, self.kernels(), strict=True):
            out = out + s[:, None, None, None] * k
        return out

    def _conv(self, x: Tensor, w: Tensor, padding: int = 1) -> Tensor:
        return F.conv2d(x, w, padding=padding, groups=self.channels)

    def forward(self, x: Tensor) -> Tensor:
        r = self.gpd_ratio
        y = F.conv2d(x * r, self.merged_weight(), self.bias, padding=1, groups=self.channels)
        return y / r if r != 1 else y

    def branch_forward(self, x: Tensor) -> Tensor:
        """The unmerged block: each branch as its own ops, scaled and summed (proves merging)."""
        r = self.gpd_ratio
        x = x * r
        s = [v[None, :, None, None] for v in self.scale]
        ys = [
            self._conv(x, self.w_3x3),
            self._conv(x, self.w_1x1, 0),
            F.avg_pool2d(self._conv(x, self.w_avg, 0), 3, 1, 1, count_include_pad=True),
            self._conv(self._conv(x, self.w_mid, 0), self.w_mid3x3),
        ]
        out = sum(si * y for si, y in zip(s, ys, strict=True))
        assert isinstance(out, Tensor)
        out = out if self.bias is None else out + self.bias[None, :, None, None]
        return out / r

    def to_conv(self) -> nn.Conv2d:
        """The merged plain depthwise conv; in a DT (`gpd_ratio` r) conv(r·z)/r = W∗z + b/r."""
        w = self.w_3x3
        c = self.channels
        conv = nn.Conv2d(c, c, 3, padding=1, groups=c, bias=self.bias is not None)
        conv = conv.to(device=w.device, dtype=w.dtype)
        with torch.no_grad():
            conv.weight.copy_(self.merged_weight())
            if self.bias is not None:
                assert conv.bias is not None
                conv.bias.copy_(self.bias / self.gpd_ratio)
        return conv.train(self.training)

    def extra_repr(self) -> str:
        return f"{self.channels}, bias={self.bias is not None}, gpd_ratio={self.gpd_ratio}"

