"""The rules for Linear and BatchNorm (gpd.md §1's first rows; §2's slices), and the dense rule
that `grouped_rules.Conv` applies to ungrouped convolutions."""

from __future__ import annotations

import torch
from torch import nn

from kdcore.schemes.gpd.layers import GPDBatchNorm1d, GPDBatchNorm2d
from kdcore.schemes.gpd.rule import Rule, Widened, Widening
from kdcore.schemes.gpd.tile import replicate, tile_bias, tile_weight


class Dense(Rule):
    """W/r blocks when the output is widened (student: r · leading block), W for the last layer
    (student: the leading input block as is)."""

    role = "dense"

    def widen(
        self,
        m: nn.Module,
        w: Widening,
        ratio: int,
        noise: float,
        generator: torch.Generator | None,
    ) -> Widened:
        assert isinstance(m, (nn.Linear, nn.Conv1d, nn.Conv2d))
        if isinstance(m, (nn.Conv1d, nn.Conv2d)) and m.groups != 1:
            raise ValueError("grouped convolutions need their own rule")  # checked by the plan
        ri, ro = (ratio if w.in_wide else 1), (ratio if w.out_wide else 1)
        if isinstance(m, nn.Linear):
            new: nn.Linear | nn.Conv1d | nn.Conv2d = nn.Linear(
                m.in_features * ri, m.out_features * ro, bias=m.bias is not None
            )
        else:
            new = type(m)(
                m.in_channels * ri,
                m.out_channels * ro,
                m.kernel_size,  # type: ignore[arg-type]
                stride=m.stride,  # type: ignore[arg-type]
                padding=m.padding,  # type: ignore[arg-type]
                dilation=m.dilation,  # type: ignore[arg-type]
                padding_mode=m.padding_mode,  # per-channel padding commutes with replication
                bias=m.bias is not None,
            )
        new = new.to(device=m.weight.device, dtype=m.weight.dtype)
        with torch.no_grad():
            new.weight.copy_(tile_weight(m.weight, ratio, w.in_wide, w.out_wide, noise, generator))
            if m.bias is not None:
                assert new.bias is not None
                new.bias.copy_(tile_bias(m.bias, ratio, w.out_wide, noise, generator))
        new.train(m.training)
        factor = float(ratio) if w.out_wide else 1.0
        scales = {"weight": factor} if factor != 1.0 else {}
        if m.bias is not None and factor != 1.0:
            scales["bias"] = factor
        return Widened(new, scales)


class BatchNorm(Rule):
    """γ, β replicated (+ε), statistics replicated, BN(r·z)/r: every factor is 1."""

    role = "norm"

    def widen(
        self,
        m: nn.Module,
        w: Widening,
        ratio: int,
        noise: float,
        generator: torch.Generator | None,
    ) -> Widened:
        assert isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d))
        if not w.in_wide:  # BN on the raw input (before the first layer): unchanged
            return Widened(m)
        cls = GPDBatchNorm1d if isinstance(m, nn.BatchNorm1d) else GPDBatchNorm2d
        new = cls(
            m.num_features * ratio,
            ratio,
            eps=m.eps,
            momentum=m.momentum,
            affine=m.affine,
            track_running_stats=m.track_running_stats,
        )
        ref = m.weight if m.affine else m.running_mean
        if ref is not None:
            new = new.to(device=ref.device, dtype=ref.dtype)
        with torch.no_grad():
            if m.affine:
                new.weight.copy_(replicate(m.weight, ratio, noise, generator))
                new.bias.copy_(replicate(m.bias, ratio, noise, generator))
            if m.track_running_stats:
                old_stats = (m.running_mean, m.running_var, m.num_batches_tracked)
                new_stats = (new.running_mean, new.running_var, new.num_batches_tracked)
                mean, var, batches = old_stats
                new_mean, new_var, new_batches = new_stats
                assert mean is not None and var is not None and batches is not None
                assert new_mean is not None and new_var is not None and new_batches is not None
                new_mean.copy_(replicate(mean, ratio))
                new_var.copy_(replicate(var, ratio))
                new_batches.copy_(batches)
        new.train(m.training)
        return Widened(new)
