"""Where the channel axis goes through views, reductions and indexing (pure functions on Act).

Kept free of the graph so each rule about moving the axis reads on its own: an operation may
move the channel axis, keep it, or drop other axes around it, but never merge it under another
axis, split it, cut it or reduce over it (any of those would mix or lose the replicas).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from torch import fx

from kdcore.schemes.gpd.plan.values import (
    PLAIN,
    Act,
    Refused,
    axis_from_front,
    chan_from_front,
    make_act,
)


def flatten(a: Act, start: int, end: int) -> Act:
    """flatten(start, end): the channel axis may be the outermost of the merged axes (then the
    merged axis holds r contiguous copies); merging it under another axis mixes the replicas."""
    if a.ndim is None and end == -1 and start >= 0 and not a.wide:
        return Act(start + 1)
    if not a.wide:
        if a.ndim is None:
            return PLAIN
        return Act(a.ndim - (axis_from_front(end, a.ndim) - axis_from_front(start, a.ndim)))
    if a.ndim is None:
        raise Refused("the tensor's rank is unknown here, so the merged axes are ambiguous")
    s, e, c = axis_from_front(start, a.ndim), axis_from_front(end, a.ndim), chan_from_front(a)
    ndim = a.ndim - (e - s)
    if c < s:
        return make_act(ndim, c)
    if c == s:
        return make_act(ndim, s)
    if c > e:
        return make_act(ndim, c - (e - s))
    raise Refused(f"it merges the widened channel axis {c} under axis {s}, mixing the replicas")


def transpose(a: Act, d0: int, d1: int) -> Act:
    if not a.wide:
        return a
    c, p0, p1 = chan_from_front(a), axis_from_front(d0, a.ndim), axis_from_front(d1, a.ndim)
    return make_act(a.ndim, p1 if c == p0 else p0 if c == p1 else c)


def permute(a: Act, dims: Sequence[int]) -> Act:
    if not a.wide:
        return a
    order = [axis_from_front(d, a.ndim) for d in dims]
    return make_act(a.ndim, order.index(chan_from_front(a)))


def unsqueeze(a: Act, d: int) -> Act:
    ndim = None if a.ndim is None else a.ndim + 1
    if not a.wide:
        return Act(ndim)
    p = axis_from_front(d, ndim)
    c = chan_from_front(a)
    return make_act(ndim, c + 1 if p <= c else c)


def unflatten(a: Act, d: int, sizes: Sequence[Any]) -> Act:
    ndim = None if a.ndim is None else a.ndim + len(sizes) - 1
    if not a.wide:
        return Act(ndim)
    p, c = axis_from_front(d, a.ndim), chan_from_front(a)
    if p == c:
        raise Refused(f"it splits the widened channel axis {c}")
    return make_act(ndim, c + len(sizes) - 1 if p < c else c)


def reduce(a: Act, dims: Any, keepdim: bool) -> Act:
    """mean/sum over axes other than the channel axis (a sum of replicas would mix them)."""
    if dims is None:
        raise Refused("it reduces over every axis, the widened channel axis included")
    dims = [dims] if isinstance(dims, int) else list(dims)
    if not a.wide:
        return Act(None if a.ndim is None or keepdim else a.ndim - len(dims))
    c = chan_from_front(a)
    ps = [axis_from_front(d, a.ndim) for d in dims]
    if c in ps:
        raise Refused(f"it reduces over the widened channel axis {c}")
    if keepdim:
        return a
    ndim = None if a.ndim is None else a.ndim - len(ps)
    return make_act(ndim, c - sum(p < c for p in ps))


def index(a: Act, idx: Any) -> Act:
    """Basic indexing: full slices keep an axis, ints drop it, None adds one; the channel axis
    must be kept whole. Tensor indices and unknown ranks are refused on widened tensors."""
    items = list(idx) if isinstance(idx, tuple) else [idx]
    if a.ndim is None:
        raise Refused("the tensor's rank is unknown here, so the indexed axes are ambiguous")
    if items.count(Ellipsis) > 1:
        raise Refused("several ellipses")
    if Ellipsis in items:
        used = sum(1 for i in items if i is not None and i is not Ellipsis)
        at = items.index(Ellipsis)
        items[at : at + 1] = [slice(None)] * (a.ndim - used)
    c = chan_from_front(a)
    pos_in, pos_out, chan_out = 0, 0, None
    for item in items:
        if item is None:
            pos_out += 1
            continue
        if isinstance(item, fx.Node) or not isinstance(item, (int, slice)):
            raise Refused("advanced (tensor) indexing of a widened tensor")
        if pos_in == c:
            if item != slice(None):
                raise Refused(f"it cuts the widened channel axis {c}")
            chan_out = pos_out
        pos_in += 1
        pos_out += isinstance(item, slice)
    if chan_out is None:  # the channel axis is among the trailing, untouched axes
        chan_out = pos_out + (c - pos_in)
    return make_act(pos_out + (a.ndim - pos_in), chan_out)
