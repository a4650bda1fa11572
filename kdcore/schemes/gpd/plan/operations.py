"""Every function and method the plan can follow, by operation name, and the dispatch to them.

One table instead of handler names looked up by string: what the plan supports reads in one
place, and an operation without an entry is refused by name when it touches widened tensors.
"""

from __future__ import annotations

import builtins
import operator
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import fx

from kdcore.schemes.gpd.plan import elementwise_ops, shape_ops
from kdcore.schemes.gpd.plan.state import WalkState
from kdcore.schemes.gpd.plan.values import PLAIN, Act, Free, Refused, ShapeOf, Val

Handler = Callable[[WalkState, fx.Node], Val]

#: Functions the plan knows, by one name per operation (methods are known by their own name).
FUNCTION_NAMES: dict[Callable[..., Any], str] = {
    operator.add: "add",
    operator.iadd: "add",
    torch.add: "add",
    operator.sub: "sub",
    torch.sub: "sub",
    operator.mul: "mul",
    torch.mul: "mul",
    operator.truediv: "div",
    torch.div: "div",
    torch.relu: "relu",
    F.relu: "relu",
    F.dropout: "dropout",
    torch.flatten: "flatten",
    torch.transpose: "transpose",
    torch.permute: "permute",
    torch.unsqueeze: "unsqueeze",
    torch.mean: "mean",
    torch.sum: "sum",
    torch.cat: "cat",
    torch.concat: "cat",
    operator.getitem: "getitem",
    builtins.getattr: "getattr",
}

#: Operation name → how it maps its operands' values.
HANDLERS: dict[str, Handler] = {
    "relu": elementwise_ops.same_value,
    "dropout": elementwise_ops.same_value,
    "contiguous": elementwise_ops.same_value,
    "clone": elementwise_ops.same_value,
    "to": elementwise_ops.same_value,
    "float": elementwise_ops.same_value,
    "add": elementwise_ops.add,
    "sub": elementwise_ops.add,
    "mul": elementwise_ops.scale,
    "div": elementwise_ops.scale,
    "flatten": shape_ops.flatten,
    "transpose": shape_ops.transpose,
    "permute": shape_ops.permute,
    "unsqueeze": shape_ops.unsqueeze,
    "unflatten": shape_ops.unflatten,
    "mean": shape_ops.reduce,
    "sum": shape_ops.reduce,
    "getattr": shape_ops.attribute,
    "size": shape_ops.size,
    "dim": shape_ops.rank,
    "getitem": shape_ops.index,
    "expand": shape_ops.expand,
    "cat": shape_ops.concatenate,
}

#: Operations whose rank the plan follows on unwidened tensors too (a Flatten before the first
#: layer tells a Linear after it that its output is 2-D).
PLAIN_OPS = {"flatten", "unsqueeze", "transpose", "permute", "unflatten"}


def apply(s: WalkState, n: fx.Node, op: str | None) -> Val:
    """Dispatch on the operation; untouched widened tensors pass any operation."""
    vals = [s.vals.get(a) for a in n.all_input_nodes]
    involved = any(isinstance(v, (ShapeOf, Free)) or (isinstance(v, Act) and v.wide) for v in vals)
    handler = HANDLERS.get(op) if op else None
    if not involved:
        return handler(s, n) if handler is not None and op in PLAIN_OPS else PLAIN
    if handler is None:
        for v in vals:  # a free tensor fed to an unknown operation stays as it is
            if isinstance(v, Free):
                s.settle(v, None)
        if any(isinstance(v, ShapeOf) or (isinstance(v, Act) and v.wide) for v in vals):
            raise Refused("no inverse-reparameterization rule for it on widened channels yet")
        return PLAIN
    return handler(s, n)
