"""What the plan knows about each value of the traced graph, and where its channel axis is.

One small vocabulary (Act, ShapeOf, Free) shared by every operation handler and the walk, so
that each of them only says how an operation maps values, not how values are represented.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Act:
    """A tensor of rank `ndim` (None: unknown); `chan` is its channel axis if it is widened
    (non-negative when the rank is known, else possibly counted from the back)."""

    ndim: int | None = None
    chan: int | None = None

    @property
    def wide(self) -> bool:
        return self.chan is not None


@dataclass(frozen=True)
class ShapeOf:
    """`x.shape` / `x.size()` of a widened tensor: its channel entry differs in the DT."""

    act: Act


@dataclass(frozen=True)
class Free:
    """A tensor the model owns outside any layer (get_attr), not yet known to be widened.
    `dims[i]` is the stored tensor's axis now at position i (None: added by `expand`);
    `fixed` the positions `expand` gave an explicit size (they cannot be the channel axis)."""

    name: str
    dims: tuple[int | None, ...]
    fixed: frozenset[int] = frozenset()


Val = Act | ShapeOf | Free | None
PLAIN = Act()


class Refused(Exception):
    """An operation the plan cannot follow; turned into a ValueError naming the node."""


def axis_from_front(d: int, ndim: int | None) -> int:
    """Axis `d` counted from the front; raises when that needs an unknown rank."""
    if d >= 0:
        return d
    if ndim is None:
        raise Refused("the tensor's rank is unknown here, so a negative axis is ambiguous")
    return d + ndim


def make_act(ndim: int | None, chan: int | None) -> Act:
    """An Act with its channel axis normalised to the front when the rank is known."""
    if chan is not None and ndim is not None and chan < 0:
        chan += ndim
    return Act(ndim, chan)


def chan_from_front(a: Act) -> int:
    """The channel axis from the front (raises when the rank is unknown and it is not)."""
    assert a.chan is not None
    return axis_from_front(a.chan, a.ndim)


def chan_from_back(a: Act) -> int:
    """The channel axis counted from the back (for broadcasting)."""
    assert a.chan is not None
    if a.chan < 0:
        return a.chan
    if a.ndim is None:
        raise Refused("the tensor's rank is unknown here, so broadcasting is ambiguous")
    return a.chan - a.ndim
