"""Channel-Branch Reparameterization (gpd.md §3) of a whole model: swap layers for branch blocks.

Before IR, every eligible layer becomes a block of parallel linear branches (`cbr_blocks.py`),
so training sees an over-parameterised model while each block stays one layer's function;
`merge` folds every block back, giving the original architecture's state-dict keys and shapes.
The IR rules (`cbr_rules.py`) widen every factor by the dense rule and replicate the scales, so
the DT's merged kernel is the dense tiling of the student's merged kernel.
"""

from __future__ import annotations

import copy

from torch import nn

from kdcore.schemes.gpd.cbr_blocks import (
    BranchConv2d,
    BranchDWConv2d,
    BranchLinear,
    Init,
    conv_eligible,
    dw_eligible,
)
from kdcore.schemes.gpd.rule_table import handled

__all__ = ["BranchConv2d", "BranchDWConv2d", "BranchLinear", "Init", "merge", "to_branches"]


def _replace(model: nn.Module, swap: dict[str, nn.Module]) -> None:
    for name, new in swap.items():
        parent_name, _, attr = name.rpartition(".")
        setattr(model.get_submodule(parent_name), attr, new)


def to_branches(model: nn.Module, init: Init = "finetune", linear: bool = True) -> nn.Module:
    """A deep copy with every 3×3 stride-1 padding-1 Conv2d (groups 1 → BranchConv2d, depthwise
    → BranchDWConv2d) and (if `linear`) every nn.Linear, the classifier included (→
    BranchLinear), replaced by its branch block under the same name.

    Other convs (strided, 1×1, grouped but not depthwise, other paddings) stay plain: these
    branches would not merge exactly into one layer of the same shape. Layers inside a module
    that an IR rule widens as a whole (the ViT's attention: q, k, v, proj) stay plain too, since
    that rule widens them as plain layers. With `init="finetune"` the copy computes exactly the
    model's function.
    """
    if init not in ("finetune", "fresh"):
        raise ValueError(f"CBR init must be 'finetune' or 'fresh', got {init!r}")
    out = copy.deepcopy(model)
    swap: dict[str, nn.Module] = {}
    wholes = [n for n, m in out.named_modules() if n and handled(m) and list(m.children())]
    for name, m in out.named_modules():
        if any(name.startswith(w + ".") for w in wholes):
            continue
        if conv_eligible(m):
            assert isinstance(m, nn.Conv2d)
            swap[name] = BranchConv2d.from_conv(m, init)
        elif dw_eligible(m):
            assert isinstance(m, nn.Conv2d)
            swap[name] = BranchDWConv2d.from_conv(m, init)
        elif linear and type(m) is nn.Linear:
            swap[name] = BranchLinear.from_linear(m, init)
    if "" in swap:  # the model itself is one layer
        return swap[""]
    _replace(out, swap)
    return out


def merge(model: nn.Module) -> nn.Module:
    """A deep copy with every branch block folded into a plain nn.Conv2d / nn.Linear holding the
    merged weight and the bias: the original model's state-dict keys and shapes."""
    out = copy.deepcopy(model)
    swap: dict[str, nn.Module] = {}
    for name, m in out.named_modules():
        if isinstance(m, (BranchConv2d, BranchDWConv2d)):
            swap[name] = m.to_conv()
        elif isinstance(m, BranchLinear):
            swap[name] = m.to_linear()
    if "" in swap:
        return swap[""]
    _replace(out, swap)
    return out

