"""One rule per layer type: how it widens (gpd.md §1) and how the student is cut back out (§2).

A rule turns a student layer into its r× wider DT layer and says, for each of the layer's
tensors, the factor that turns the DT tensor's leading block (the student's shape, taken from
the start of every axis) back into the student's tensor: r for a dense layer whose output is
widened (its blocks are W/r), 1 for everything replicated unscaled (BatchNorm γ, β and
statistics, the last layer's W). The hard strategy (gpd.md §2) relies on exactly this: the
student is always `factor · dt_tensor[:s0, :s1, ...]`.

New layer types (depthwise convs, LayerNorm, attention, CBR branches) plug in with `@rule(...)`
in their own module; `plan` and `expand` look rules up here.
"""

from __future__ import annotations

from collections.abc import Callable
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
    """

    role: Role = "dense"

    def widen(
        self,
        m: nn.Module,
        w: Widening,
        ratio: int,
        noise: float,
        generator: torch.Generator | None,
    ) -> Widened:  # pragma: no cover - abstract
        raise NotImplementedError


RULES: dict[type[nn.Module], Rule] = {}


def rule(*types: type[nn.Module]) -> Callable[[type[Rule]], type[Rule]]:
    """Class decorator: `@rule(nn.Linear, nn.Conv2d) class Dense(Rule): ...`."""

    def register(cls: type[Rule]) -> type[Rule]:
        for t in types:
            RULES[t] = cls()
        return cls

    return register


def find(m: nn.Module) -> Rule | None:
    """The rule for `m`'s most specific registered class (a subclass inherits its base's)."""
    for cls in type(m).__mro__:
        if cls in RULES:
            return RULES[cls]
    return None


def handled(m: nn.Module) -> bool:
    return find(m) is not None
