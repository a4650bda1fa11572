"""Handlers of operations on shapes: views, reductions, indexing, broadcasting, concatenation
and reading a shape.

Each reads its arguments off the node (positional or keyword, as torch allows) and hands the
axis bookkeeping to `channel_axis`; reading the widened channel axis's size is refused, since
it differs between the student and the DT.
"""

from __future__ import annotations

from typing import Any

from torch import fx

from kdcore.schemes.gpd.plan import channel_axis
from kdcore.schemes.gpd.plan.state import WalkState
from kdcore.schemes.gpd.plan.values import (
    PLAIN,
    Act,
    Free,
    Refused,
    ShapeOf,
    Val,
    axis_from_front,
    chan_from_front,
    make_act,
)

_DEFAULT_FLATTEN_START = 0


def _arg(n: fx.Node, i: int, name: str, default: Any) -> Any:
    """Argument `i` of the call, given by position or as keyword `name`."""
    return n.args[i] if len(n.args) > i else n.kwargs.get(name, default)


def _sizes(n: fx.Node, first: int, keyword: str) -> list[Any]:
    """Sizes given as varargs from position `first`, as one tuple, or as keyword `keyword`."""
    given: Any = n.kwargs.get(keyword, ())
    sizes = list(n.args[first:]) or list(given)
    if len(sizes) == 1 and isinstance(sizes[0], (tuple, list)):
        sizes = list(sizes[0])
    return sizes


def flatten(s: WalkState, n: fx.Node) -> Val:
    start = _arg(n, 1, "start_dim", _DEFAULT_FLATTEN_START)
    return channel_axis.flatten(s.act(n.args[0]), start, _arg(n, 2, "end_dim", -1))


def transpose(s: WalkState, n: fx.Node) -> Val:
    a = s.act(n.args[0])
    return channel_axis.transpose(a, _arg(n, 1, "dim0", 0), _arg(n, 2, "dim1", 1))


def permute(s: WalkState, n: fx.Node) -> Val:
    return channel_axis.permute(s.act(n.args[0]), _sizes(n, 1, "dims"))


def unsqueeze(s: WalkState, n: fx.Node) -> Val:
    return channel_axis.unsqueeze(s.act(n.args[0]), _arg(n, 1, "dim", 0))


def unflatten(s: WalkState, n: fx.Node) -> Val:
    a = s.act(n.args[0])
    return channel_axis.unflatten(a, _arg(n, 1, "dim", 0), _arg(n, 2, "sizes", ()))


def reduce(s: WalkState, n: fx.Node) -> Val:
    """mean and sum."""
    a = s.act(n.args[0])
    return channel_axis.reduce(a, _arg(n, 1, "dim", None), _arg(n, 2, "keepdim", False))


def index(s: WalkState, n: fx.Node) -> Val:
    """getitem: an entry of a widened tensor's shape, or basic indexing of a tensor."""
    v, idx = s.val(n.args[0]), n.args[1]
    if isinstance(v, ShapeOf):
        if not isinstance(idx, int) or axis_from_front(idx, v.act.ndim) == chan_from_front(v.act):
            raise Refused("it reads the size of the widened channel axis")
        return None
    if isinstance(v, Free):
        s.settle(v, None)
        return PLAIN
    a = s.act(n.args[0])
    return channel_axis.index(a, idx) if a.wide else PLAIN


def expand(s: WalkState, n: fx.Node) -> Val:
    """Broadcasting to more or larger axes; the channel axis must keep its size (-1)."""
    v, sizes = s.val(n.args[0]), _sizes(n, 1, "size")
    if isinstance(v, Free):
        lead = len(sizes) - len(v.dims)
        dims = (None,) * lead + v.dims
        fixed = {i for i, e in enumerate(sizes) if not (isinstance(e, int) and e == -1)}
        return Free(v.name, dims, v.fixed | frozenset(fixed))
    a = s.act(n.args[0])
    if a.ndim is None:
        raise Refused("the tensor's rank is unknown here")
    c = chan_from_front(a) + len(sizes) - a.ndim
    if sizes[c] != -1:
        raise Refused("it gives the widened channel axis an explicit size")
    return make_act(len(sizes), c)


def concatenate(s: WalkState, n: fx.Node) -> Val:
    """cat along a non-channel axis of tensors all widened alike; free tensors among them are
    widened along the same axis."""
    parts, dim = _arg(n, 0, "tensors", []), _arg(n, 1, "dim", 0)
    vals = [s.val(p) for p in parts]
    acts = [v for v in vals if isinstance(v, Act) and v.wide]
    if not acts:
        for v in vals:
            if isinstance(v, Free):
                s.settle(v, None)
        return PLAIN
    a = acts[0]
    c = chan_from_front(a)
    if any(chan_from_front(b) != c for b in acts) or axis_from_front(dim, a.ndim) == c:
        raise Refused(f"it concatenates along or across the widened channel axis {c}")
    for v in vals:
        if isinstance(v, Free):
            s.settle(v, c)
        elif not (isinstance(v, Act) and v.wide):
            raise Refused("it concatenates widened and unwidened tensors")
    return a


def attribute(s: WalkState, n: fx.Node) -> Val:
    """getattr: `.shape` of a widened tensor is a ShapeOf; its rank, dtype, device are fine."""
    v, attr = s.val(n.args[0]), n.args[1]
    if isinstance(v, Act) and v.wide and attr == "shape":
        return ShapeOf(v)
    if isinstance(v, Act) and v.wide and attr in ("ndim", "dtype", "device"):
        return None
    if isinstance(v, Free):
        s.settle(v, None)
        return None
    raise Refused(f"attribute {attr!r} of a widened tensor")


def size(s: WalkState, n: fx.Node) -> Val:
    """x.size() is a ShapeOf; x.size(d) only for d other than the channel axis."""
    a = s.act(n.args[0])
    d = _arg(n, 1, "dim", None)
    if d is None:
        return ShapeOf(a)
    if axis_from_front(d, a.ndim) == chan_from_front(a):
        raise Refused("it reads the size of the widened channel axis")
    return None


def rank(s: WalkState, n: fx.Node) -> Val:
    """x.dim(): the rank is the student's."""
    s.act(n.args[0])
    return None
