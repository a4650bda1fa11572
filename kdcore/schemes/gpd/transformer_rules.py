"""Transformer layers (gpd.md §1): LayerNorm, non-homogeneous activations, the zoo's attention,
and the free tensors (cls_token, pos_embed) that a ViT adds to its widened tokens."""

from __future__ import annotations

import copy

import torch
from torch import nn

from kdcore.models.zoo.vit import Attention
from kdcore.schemes.gpd.basic_rules import Dense
from kdcore.schemes.gpd.layers import GPDLayerNorm, scaled_activation
from kdcore.schemes.gpd.rule import Rule, Widened, Widening
from kdcore.schemes.gpd.tile import replicate, tile_along


class LayerNorm(Rule):
    """LN(r·z)/r over the widened last axis; γ, β replicated (+ε): every factor is 1."""

    role = "norm"
    channel_axis = -1

    def widen(
        self,
        m: nn.Module,
        w: Widening,
        ratio: int,
        noise: float,
        generator: torch.Generator | None,
    ) -> Widened:
        assert isinstance(m, nn.LayerNorm)
        if not w.in_wide:
            return Widened(m)
        (dim,) = m.normalized_shape  # the plan refuses LayerNorms over several axes
        new = GPDLayerNorm(
            dim * ratio,
            ratio,
            eps=m.eps,
            elementwise_affine=m.elementwise_affine,
            bias=m.bias is not None,
        )
        if m.weight is not None:
            new = new.to(device=m.weight.device, dtype=m.weight.dtype)
        with torch.no_grad():
            if m.weight is not None:
                new.weight.copy_(replicate(m.weight, ratio, noise, generator))
            if m.bias is not None:
                new.bias.copy_(replicate(m.bias, ratio, noise, generator))
        new.train(m.training)
        return Widened(new)


class Activation(Rule):
    """f(r·z)/r for element-wise activations that are not positively homogeneous (no tensors)."""

    role = "norm"

    def widen(
        self,
        m: nn.Module,
        w: Widening,
        ratio: int,
        noise: float,
        generator: torch.Generator | None,
    ) -> Widened:
        return Widened(scaled_activation(m, ratio) if w.in_wide else m)


class SelfAttention(Rule):
    """The zoo's multi-head attention: h → r·h heads of the same head_dim, scale × r².

    q, k, v widen their output by the dense rule, so the DT's r·h heads are r replicas of the
    student's h heads, each q and k carrying 1/r: q·kᵀ shrinks by r², which the scale undoes
    (gpd.md §1: "q and k multiplied by r before QKᵀ"). Softmax then matches the student's, every
    head's output is the student's /r, and `proj` is a dense layer on the widened heads.
    """

    role = "dense"
    channel_axis = -1

    def widen(
        self,
        m: nn.Module,
        w: Widening,
        ratio: int,
        noise: float,
        generator: torch.Generator | None,
    ) -> Widened:
        assert isinstance(m, Attention)
        dense = Dense()
        new = copy.deepcopy(m)
        scales: dict[str, float] = {}
        inner = Widening(in_wide=w.in_wide, out_wide=True)
        for name, lw in (("q", inner), ("k", inner), ("v", inner), ("proj", None)):
            lw = lw or Widening(in_wide=True, out_wide=w.out_wide)
            widened = dense.widen(getattr(m, name), lw, ratio, noise, generator)
            setattr(new, name, widened.module)
            scales.update({f"{name}.{k}": f for k, f in widened.scales.items()})
        new.heads = m.heads * ratio
        new.scale = m.scale * ratio**2
        new.train(m.training)
        return Widened(new, scales)


def widen_tensors(
    dt: nn.Module,
    axes: dict[str, int],
    ratio: int,
    noise: float,
    generator: torch.Generator | None,
) -> dict[str, float]:
    """Widen the model's free tensors in place (name → channel axis, from the plan): t/r
    replicated along the axis (+ε), so adding or concatenating them keeps the DT state's
    convention. Returns their student factors (r)."""
    scales: dict[str, float] = {}
    for name, axis in axes.items():
        owner_name, _, attr = name.rpartition(".")
        owner = dt.get_submodule(owner_name)
        old = getattr(owner, attr)
        with torch.no_grad():
            new = tile_along(old.detach(), ratio, axis, noise, generator)
        if isinstance(old, nn.Parameter):
            setattr(owner, attr, nn.Parameter(new, requires_grad=old.requires_grad))
        else:
            setattr(owner, attr, new)  # a buffer stays a buffer
        scales[name] = float(ratio)
    return scales
