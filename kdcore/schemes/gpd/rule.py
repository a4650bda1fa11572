"""What a GPD layer rule is: how one layer type widens (gpd.md §1) and is cut back out (§2).

A rule turns a student layer into its r× wider DT layer and says, for each of the layer's
tensors, the factor that turns the DT tensor's leading block (the student's shape, taken from
the start of every axis) back into the student's tensor: r for a dense layer whose output is
widened (its blocks are W/r), 1 for everything replicated unscaled (BatchNorm γ, β and
statistics, the last layer's W). The hard strategy (gpd.md §2) relies on exactly this: the
student is always `factor · dt_tensor[:s0, :s1, ...]`.

The interface lives apart from the rules themselves and from the table that lists them
(`rule_table.py`), so rule modules, the plan and the expansion all depend on it and not on
each other.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import torch
from torch import nn

Role = Literal["dense", "norm"]


@dataclass(frozen=True)
class Widening:
    """For one layer with weights: is its input widened, is its output widened."""

    in_wide: bool
    out_wide: bool


@dataclass
class Widened:
    """A DT layer and, for its state-dict keys (local names), the student's factor ≠ 1."""

    module: nn.Module
    scales: dict[str, float] = field(default_factory=dict)


class Rule:
    """`role` tells the plan how widening flows through the layer:

    - `dense`: maps input channels to output channels (Linear, Conv); the output is widened
      unless it is a last layer (reaches the model output through parameter-free operations);
    - `norm`: per-channel (BatchNorm, LayerNorm): the output is widened iff the input is.

    Rules for layer types the plan does not know by themselves declare `channel_axis` (the axis
    the layer acts on, -1 for the last; None: element-wise) and, when the layer's type fixes it,
    `ndim` (the rank of the batched tensors it reads).
    """

    role: Role = "dense"
    channel_axis: int | None = None
    ndim: int | None = None

    def role_of(self, m: nn.Module) -> Role:
        """The role for this module (a rule may decide per module, e.g. grouped convs)."""
        return self.role

    def widen(
        self,
        m: nn.Module,
        w: Widening,
        ratio: int,
        noise: float,
        generator: torch.Generator | None,
    ) -> Widened:  # pragma: no cover - abstract
        raise NotImplementedError
