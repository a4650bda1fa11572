"""What the plan knows about layer types: which pass through, which axis and rank they act on.

These are facts about torch's own layers (and what rules declare for theirs); gathering them
here keeps the walk free of isinstance chains, and lets the plan refuse an uncovered built-in
layer before anything is traced.
"""

from __future__ import annotations

from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm
from torch.nn.modules.conv import _ConvNd

from kdcore.schemes.gpd.plan.graph import label
from kdcore.schemes.gpd.rule import Rule
from kdcore.schemes.gpd.rule_table import RULES, handled

#: Parameter-free layers that act on every channel alike: ReLU and LeakyReLU are positively
#: homogeneous (gpd.md §1: "ReLU needs nothing"), pooling and dropout are per-channel or linear.
PASSTHROUGH = (
    nn.ReLU,
    nn.LeakyReLU,
    nn.Identity,
    nn.Flatten,
    nn.Dropout,
    nn.MaxPool1d,
    nn.MaxPool2d,
    nn.AvgPool1d,
    nn.AvgPool2d,
    nn.AdaptiveAvgPool1d,
    nn.AdaptiveAvgPool2d,
    nn.AdaptiveMaxPool1d,
    nn.AdaptiveMaxPool2d,
)
#: Pooling acts on the spatial axes after the channel axis 1.
POOLING = PASSTHROUGH[5:]
CONTAINERS = (nn.Sequential, nn.ModuleList, nn.ModuleDict)

_RANKS: tuple[tuple[tuple[type[nn.Module], ...], int], ...] = (
    ((nn.BatchNorm2d, nn.MaxPool2d, nn.AvgPool2d, nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d), 4),
    ((nn.MaxPool1d, nn.AvgPool1d, nn.AdaptiveAvgPool1d, nn.AdaptiveMaxPool1d), 3),
)


def _supported_names() -> str:
    return ", ".join(sorted({t.__name__ for t in (*RULES, *PASSTHROUGH)}))


def _inside_handled(name: str, handled_names: list[str]) -> bool:
    return any(name.startswith(h + ".") for h in handled_names)


def check_modules(model: nn.Module) -> None:
    """Fail before tracing or building on built-in layer types no rule covers."""
    handled_names: list[str] = []
    for name, m in model.named_modules():
        if isinstance(m, CONTAINERS) or _inside_handled(name, handled_names):
            continue
        if handled(m):
            handled_names.append(name)
            continue
        builtin = type(m).__module__.startswith("torch.nn")
        if builtin and not isinstance(m, PASSTHROUGH):
            raise ValueError(
                f"GPD cannot expand module {label(name)} ({type(m).__name__}): no inverse-"
                f"reparameterization rule for this layer type yet (supported: "
                f"{_supported_names()})"
            )


def layer_axis(m: nn.Module, found: Rule | None, ndim: int | None) -> int | None:
    """The axis a layer acts on (-1: the last), or None for element-wise layers. Rules of other
    layer types declare it as `channel_axis`."""
    if isinstance(m, (nn.Linear, nn.LayerNorm)):
        return -1
    if isinstance(m, _ConvNd):
        wdim = m.weight.dim()
        return 1 if ndim is None else ndim - wdim + 1  # batched: 1; unbatched: 0
    if isinstance(m, (_BatchNorm, *POOLING)):
        return 1
    return None if found is None else found.channel_axis


def layer_rank(m: nn.Module, found: Rule | None) -> int | None:
    """The rank of the (batched) tensors a layer reads, when its type fixes it: a conv's kernel
    rank (for a rule's conv-like layer, acting on axis 1: its largest parameter's rank, unless
    the rule declares `ndim`), 4 for 2-d BatchNorm and pooling. None: any rank (Linear, LN)."""
    if isinstance(m, _ConvNd):
        return m.weight.dim()
    for types, rank in _RANKS:
        if isinstance(m, types):
            return rank
    if found is None:
        return None
    if found.ndim is not None:
        return found.ndim
    if found.channel_axis == 1:
        ranks = [p.dim() for p in m.parameters()]
        if ranks and max(ranks) >= 3:
            return max(ranks)
    return None
