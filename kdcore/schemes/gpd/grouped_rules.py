"""Grouped and depthwise convolutions (gpd.md §1: "groups g → r·g; W and b replicated, unscaled;
computes conv(r·z)/r"; §2: the student's W and b are the leading blocks as is).

A grouped conv maps each group of input channels to its own output channels, so with the DT's
groups r·g the j-th DT group reads replica j // g of student group j % g: replicating W along
the output axis gives every replica the student's kernels. It is per-channel-group, like a
norm: its output is widened iff its input is. One rule serves every nn.Conv1d/nn.Conv2d
(the only one the rule table lists for them) and hands groups == 1 to `Dense`.
"""

from __future__ import annotations

import torch
from torch import nn

from kdcore.schemes.gpd.basic_rules import Dense
from kdcore.schemes.gpd.layers import GPDConv1d, GPDConv2d
from kdcore.schemes.gpd.rule import Role, Rule, Widened, Widening
from kdcore.schemes.gpd.tile import replicate


class Conv(Rule):
    """Dense for groups == 1; otherwise the grouped rule (every student factor 1)."""

    role = "dense"

    def role_of(self, m: nn.Module) -> Role:
        """Per module: a grouped conv is per-channel-group ("norm"), a plain one "dense"."""
        return "norm" if getattr(m, "groups", 1) != 1 else "dense"

    def widen(
        self,
        m: nn.Module,
        w: Widening,
        ratio: int,
        noise: float,
        generator: torch.Generator | None,
    ) -> Widened:
        assert isinstance(m, (nn.Conv1d, nn.Conv2d))
        if m.groups == 1:
            return Dense().widen(m, w, ratio, noise, generator)
        if not w.in_wide:  # a grouped conv on the raw input stays as it is
            return Widened(m)
        cls = GPDConv1d if isinstance(m, nn.Conv1d) else GPDConv2d
        new = cls(
            m.in_channels * ratio,
            m.out_channels * ratio,
            m.kernel_size,
            stride=m.stride,
            padding=m.padding,
            dilation=m.dilation,
            groups=m.groups * ratio,
            bias=m.bias is not None,
            padding_mode=m.padding_mode,
            gpd_ratio=ratio,
        ).to(device=m.weight.device, dtype=m.weight.dtype)
        with torch.no_grad():
            new.weight.copy_(replicate(m.weight, ratio, noise, generator))
            if m.bias is not None:
                assert new.bias is not None
                new.bias.copy_(replicate(m.bias, ratio, noise, generator))
        new.train(m.training)
        return Widened(new)
