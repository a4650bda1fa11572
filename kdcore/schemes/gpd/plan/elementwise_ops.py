"""Handlers of element-wise operations: what keeps, adds or scales widened tensors exactly.

A widened tensor is r copies of the student's tensor scaled 1/r, so an operation is allowed on
it only if it commutes with that: positively homogeneous activations and copies keep it, sums
of tensors widened alike add the replicas, scaling by a number scales them. Constants added or
products of tensors are not homogeneous and are refused.
"""

from __future__ import annotations

import operator
from typing import Any

import torch
from torch import fx

from kdcore.schemes.gpd.plan.state import WalkState
from kdcore.schemes.gpd.plan.values import (
    PLAIN,
    Act,
    Free,
    Refused,
    Val,
    chan_from_back,
    make_act,
)


def same_value(s: WalkState, n: fx.Node) -> Val:
    """relu, dropout and copies (contiguous, clone, to, float): the value passes unchanged."""
    v = s.val(n.args[0])
    return v if isinstance(v, Free) else s.act(n.args[0])


def add(s: WalkState, n: fx.Node) -> Val:
    """A sum of widened tensors (their replicas add up); with a free tensor, that tensor is
    widened along the channel axis. Constants and unwidened tensors are not homogeneous."""
    operands = list(n.args) + list(n.kwargs.values())
    if len(n.args) != 2 or n.kwargs or not all(isinstance(a, fx.Node) for a in operands):
        raise Refused("no inverse-reparameterization rule for it on widened channels yet")
    vals = [s.val(a) for a in operands]
    acts = [v for v in vals if isinstance(v, Act) and v.wide]
    if not acts:
        for v in vals:
            if isinstance(v, Free):
                s.settle(v, None)
        return PLAIN
    backs = {chan_from_back(a) for a in acts}
    if len(backs) != 1:
        raise Refused("it adds tensors widened along different axes")
    back = backs.pop()
    for v in vals:
        if isinstance(v, Free):
            s.settle(v, len(v.dims) + back)
        elif not (isinstance(v, Act) and v.wide):
            raise Refused(
                "no inverse-reparameterization rule for it on widened channels yet "
                "(one operand is not widened)"
            )
    ndims = [a.ndim for a in acts]
    ndim = None if None in ndims else max(d for d in ndims if d is not None)
    return make_act(ndim, back if ndim is None else back + ndim)


def _number(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool)


def scale(s: WalkState, n: fx.Node) -> Val:
    """mul/div: scaling by a Python number is homogeneous; products of tensors are not."""
    a, b = n.args[0], n.args[1] if len(n.args) > 1 else None
    divide = n.target in (operator.truediv, torch.div, "div")
    if _number(b):
        return s.act(a)
    if _number(a) and not divide:
        return s.act(b)
    raise Refused("it multiplies or divides by a tensor (not homogeneous)")
