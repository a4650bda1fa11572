"""IR rules for the CBR blocks (gpd.md §1 applied to §3): widen each branch so the merge commutes.

The DT's merged kernel must be the dense-rule tiling of the student's merged kernel: blocks K/r
when the output is widened, K (input blocks, unscaled) for a last layer. Since the scales are
per output channel, replicating them unscaled (factor 1) and tiling every branch kernel by the
dense rule gives exactly that. Product branches (1×1 then 3×3; W_b·W_a) are treated as two dense
layers with their middle width widened r× as well (the DT's state convention (1/r)·[h; …; h]
holds in the middle): the first factor has blocks W_a/r (factor r), the second W_b/r (factor r)
or W_b for a last layer (factor 1), and the r middle replicas sum to r·(W_b/r)(W_a/r) = K/r, or
K for a last layer. The depthwise factor of the dw-pw branch is replicated unscaled (factor 1)
along its input channels, its pointwise factor follows the dense rule.

A depthwise block (`BranchDWConv2d`) is channel-wise ("norm" role): every tensor replicated
unscaled (factor 1) and the block computes conv(r·z)/r, gpd.md §1's depthwise rule.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from kdcore.schemes.gpd.cbr_blocks import BranchConv2d, BranchDWConv2d, BranchLinear
from kdcore.schemes.gpd.rule import Rule, Widened, Widening
from kdcore.schemes.gpd.tile import replicate, tile_bias, tile_weight


def _scale_rows(
    s: Tensor, ratio: int, out_wide: bool, noise: float, gen: torch.Generator | None
) -> Tensor:
    """Per-output-channel scales (branches, C_out): replicated unscaled along C_out (factor 1)."""
    return replicate(s.t(), ratio, noise, gen).t() if out_wide else s.clone()


class BranchConv(Rule):
    """Every branch by the dense rule (products with their middle widened), scales replicated."""

    role = "dense"
    channel_axis = 1  # for the plan's channel-axis tracking: (N, C, H, W)
    ndim = 4  # the rank of its input and output (batched), as the plan knows it for nn.Conv2d

    def widen(
        self,
        m: nn.Module,
        w: Widening,
        ratio: int,
        noise: float,
        generator: torch.Generator | None,
    ) -> Widened:
        assert isinstance(m, BranchConv2d)
        ri, ro = (ratio if w.in_wide else 1), (ratio if w.out_wide else 1)
        new = BranchConv2d(
            m.in_channels * ri,
            m.out_channels * ro,
            bias=m.bias is not None,
            mid_channels=m.mid_channels * ratio,
        ).to(device=m.w_3x3.device, dtype=m.w_3x3.dtype)
        fo = float(ratio) if w.out_wide else 1.0

        def dense(t: Tensor, in_wide: bool, out_wide: bool) -> Tensor:
            return tile_weight(t, ratio, in_wide, out_wide, noise, generator)

        scales: dict[str, float] = {}
        with torch.no_grad():
            for key in ("w_3x3", "w_1x1", "w_avg", "w_pw"):
                getattr(new, key).copy_(dense(getattr(m, key), w.in_wide, w.out_wide))
                scales[key] = fo
            new.w_mid.copy_(dense(m.w_mid, w.in_wide, True))
            scales["w_mid"] = float(ratio)
            new.w_mid3x3.copy_(dense(m.w_mid3x3, True, w.out_wide))
            scales["w_mid3x3"] = fo
            dw = replicate(m.w_dw, ratio, noise, generator) if w.in_wide else m.w_dw.clone()
            new.w_dw.copy_(dw)
            new.scale.copy_(_scale_rows(m.scale, ratio, w.out_wide, noise, generator))
            if m.bias is not None:
                assert new.bias is not None
                new.bias.copy_(tile_bias(m.bias, ratio, w.out_wide, noise, generator))
                scales["bias"] = fo
        new.train(m.training)
        return Widened(new, {k: f for k, f in scales.items() if f != 1.0})


class BranchDense(Rule):
    """W by the dense rule, W_b·W_a as two dense layers with the middle widened."""

    role = "dense"
    channel_axis = -1  # acts on the last axis, like nn.Linear

    def widen(
        self,
        m: nn.Module,
        w: Widening,
        ratio: int,
        noise: float,
        generator: torch.Generator | None,
    ) -> Widened:
        assert isinstance(m, BranchLinear)
        ri, ro = (ratio if w.in_wide else 1), (ratio if w.out_wide else 1)
        new = BranchLinear(
            m.in_features * ri,
            m.out_features * ro,
            bias=m.bias is not None,
            mid_features=m.mid_features * ratio,
        ).to(device=m.w_orig.device, dtype=m.w_orig.dtype)
        fo = float(ratio) if w.out_wide else 1.0
        scales = {"w_orig": fo, "w_a": float(ratio), "w_b": fo}
        with torch.no_grad():
            new.w_orig.copy_(tile_weight(m.w_orig, ratio, w.in_wide, w.out_wide, noise, generator))
            new.w_a.copy_(tile_weight(m.w_a, ratio, w.in_wide, True, noise, generator))
            new.w_b.copy_(tile_weight(m.w_b, ratio, True, w.out_wide, noise, generator))
            new.scale.copy_(_scale_rows(m.scale, ratio, w.out_wide, noise, generator))
            if m.bias is not None:
                assert new.bias is not None
                new.bias.copy_(tile_bias(m.bias, ratio, w.out_wide, noise, generator))
                scales["bias"] = fo
        new.train(m.training)
        return Widened(new, {k: f for k, f in scales.items() if f != 1.0})


class BranchDepthwise(Rule):
    """Every tensor replicated unscaled (+ε), conv(r·z)/r: every factor is 1."""

    role = "norm"
    channel_axis = 1
    ndim = 4

    def widen(
        self,
        m: nn.Module,
        w: Widening,
        ratio: int,
        noise: float,
        generator: torch.Generator | None,
    ) -> Widened:
        assert isinstance(m, BranchDWConv2d)
        if not w.in_wide:  # on the raw input (before the first dense layer): unchanged
            return Widened(m)
        new = BranchDWConv2d(
            m.channels * ratio, bias=m.bias is not None, gpd_ratio=m.gpd_ratio * ratio
        ).to(device=m.w_3x3.device, dtype=m.w_3x3.dtype)
        with torch.no_grad():
            for key in ("w_3x3", "w_1x1", "w_avg", "w_mid", "w_mid3x3", "bias"):
                t = getattr(m, key)
                if t is not None:
                    getattr(new, key).copy_(replicate(t, ratio, noise, generator))
            new.scale.copy_(_scale_rows(m.scale, ratio, True, noise, generator))
        new.train(m.training)
        return Widened(new)
