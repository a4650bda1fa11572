"""What the walk has learnt so far: every node's value and each free tensor's decision.

The operation handlers read their operands' values and settle free tensors through this one
object, so they need nothing else from the walk.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import fx, nn

from kdcore.schemes.gpd.plan.values import PLAIN, Act, Free, Refused, ShapeOf, Val


class WalkState:
    """Node → value, and free tensor → its channel axis (None: not widened)."""

    def __init__(self, model: nn.Module) -> None:
        self.model = model
        self.vals: dict[fx.Node, Val] = {}
        self.free: dict[str, int | None] = {}

    def val(self, a: Any) -> Val:
        """The value of a node argument (None for constants and anything not a node)."""
        return self.vals.get(a) if isinstance(a, fx.Node) else None

    def act(self, a: Any) -> Act:
        """The Act of an argument; a free tensor used this way is not widened."""
        v = self.val(a)
        if isinstance(v, Free):
            self.settle(v, None)
            return PLAIN
        if isinstance(v, ShapeOf):
            raise Refused("the shape of a widened tensor is used as a tensor")
        return v if isinstance(v, Act) else PLAIN

    def settle(self, f: Free, pos: int | None) -> None:
        """Decide free tensor `f`: widened along its current axis `pos`, or not (None)."""
        axis = None
        if pos is not None:
            if pos < 0 or pos >= len(f.dims) or f.dims[pos] is None or pos in f.fixed:
                raise Refused(f"tensor {f.name!r} would be widened along an axis it lacks")
            axis = f.dims[pos]
            assert axis is not None
            size = self.tensor(f.name).shape[axis]
            if size == 1:
                raise Refused(f"tensor {f.name!r} broadcasts over the widened channel axis")
        if self.free.setdefault(f.name, axis) != axis:
            raise Refused(f"tensor {f.name!r} is used both widened and not (or along two axes)")

    def tensor(self, name: str) -> torch.Tensor:
        """The model's tensor `name` (a parameter or buffer, by its state-dict name)."""
        owner, _, attr = name.rpartition(".")
        t = getattr(self.model.get_submodule(owner), attr)
        assert isinstance(t, torch.Tensor), name
        return t
