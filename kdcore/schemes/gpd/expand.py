"""Inverse Reparameterization (gpd.md §1): the student → a wider DT computing the same function.

The DT is a deep copy of the student in which every layer with a rule (`rule_table.py`) is
replaced by its r× wider form, under the same name. The model's class, forward, attribute and
state-dict key names are therefore the student's own; only shapes grow. A deep copy (rather than
rebuilding the zoo class with scaled widths) works for any model made of supported layers and
keeps the first layer's input and the last layer's output at the student's sizes, which a
width-scaled zoo constructor would not.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
from torch import nn

from kdcore.schemes.gpd.plan.walk import analyse
from kdcore.schemes.gpd.rule_table import find
from kdcore.schemes.gpd.transformer_rules import widen_tensors

#: The attribute where zoo models keep their penultimate width (feature-based methods read it).
_FEATURE_DIM = "feature_dim"


@dataclass
class Expansion:
    """The DT and, per state-dict key, the factor that turns the leading block of the DT's
    tensor (the student's shape) into the student's tensor (keys not listed: 1)."""

    dt: nn.Module
    ratio: int
    scales: dict[str, float]


def _check(ratio: int, noise: float) -> None:
    if isinstance(ratio, bool) or not isinstance(ratio, int) or ratio < 2:
        raise ValueError(f"GPD expansion ratio must be an integer >= 2, got {ratio!r}")
    if not noise >= 0.0:
        raise ValueError(f"GPD noise must be >= 0, got {noise!r}")


def expansion(
    student: nn.Module,
    ratio: int,
    noise: float = 0.0,
    generator: torch.Generator | None = None,
) -> Expansion:
    """`expand`, plus the slice factors the hard strategy (gpd.md §2) cuts the student with."""
    _check(ratio, noise)
    planned = analyse(student)
    widening = planned.layers
    dt = copy.deepcopy(student)
    scales: dict[str, float] = {}
    for name, w in widening.items():
        parent_name, _, attr = name.rpartition(".")
        parent = dt.get_submodule(parent_name)
        old = parent.get_submodule(attr)
        found = find(old)
        assert found is not None, name  # the plan only lists layers with a rule
        if found.role == "dense" and not (w.in_wide or w.out_wide):
            continue  # a single-layer model: nothing to widen
        widened = found.widen(old, w, ratio, noise, generator)
        if widened.module is not old:
            setattr(parent, attr, widened.module)
        scales.update({f"{name}.{k}": f for k, f in widened.scales.items()})
    scales.update(widen_tensors(dt, planned.tensors, ratio, noise, generator))
    width = getattr(student, _FEATURE_DIM, None)
    if isinstance(width, int):
        setattr(dt, _FEATURE_DIM, width * ratio)  # the penultimate width, now r× wider
    return Expansion(dt, ratio, scales)


def expand(
    student: nn.Module,
    ratio: int,
    noise: float = 0.0,
    generator: torch.Generator | None = None,
) -> nn.Module:
    """Build the dynamic teacher: `student` widened `ratio`× with the same function at noise 0.

    `noise` is the std of the ε added to every replicated block (gpd.md §1; the reference uses
    1e-6) to break the symmetry between replicas. The student is left untouched. Unsupported
    layers raise ValueError naming the module before anything is built.
    """
    return expansion(student, ratio, noise, generator).dt
