"""Inverse Reparameterization (gpd.md §1): the student → a wider DT computing the same function.

The DT is a deep copy of the student in which every Linear/Conv/BatchNorm is replaced by an r×
wider layer of the same kind (BatchNorm by its BN(r·z)/r subclass), under the same name. The
model's class, forward, attribute and state-dict key names are therefore the student's own; only
shapes grow. A deep copy (rather than rebuilding the zoo class with scaled widths) works for any
model made of supported layers and keeps the first layer's input and the last layer's output at
the student's sizes, which a width-scaled zoo constructor would not.
"""

from __future__ import annotations

import copy

import torch
from torch import nn

from kdcore.schemes.gpd.layers import GPDBatchNorm1d, GPDBatchNorm2d
from kdcore.schemes.gpd.plan import Widening, plan
from kdcore.schemes.gpd.tile import replicate, tile_bias, tile_weight


def _dense(
    m: nn.Module, w: Widening, r: int, noise: float, gen: torch.Generator | None
) -> nn.Module:
    """Linear/Conv by the dense rule of gpd.md §1 (W/r blocks when the output is widened)."""
    ri, ro = (r if w.in_wide else 1), (r if w.out_wide else 1)
    if isinstance(m, nn.Linear):
        new: nn.Module = nn.Linear(m.in_features * ri, m.out_features * ro, bias=m.bias is not None)
    else:
        assert isinstance(m, (nn.Conv1d, nn.Conv2d))
        new = type(m)(
            m.in_channels * ri,
            m.out_channels * ro,
            m.kernel_size,  # type: ignore[arg-type]
            stride=m.stride,  # type: ignore[arg-type]
            padding=m.padding,  # type: ignore[arg-type]
            dilation=m.dilation,  # type: ignore[arg-type]
            padding_mode=m.padding_mode,  # per-channel padding commutes with replication
            bias=m.bias is not None,
        )
    new = new.to(device=m.weight.device, dtype=m.weight.dtype)
    with torch.no_grad():
        new.weight.copy_(tile_weight(m.weight, r, w.in_wide, w.out_wide, noise, gen))
        if m.bias is not None:
            new.bias.copy_(tile_bias(m.bias, r, w.out_wide, noise, gen))
    new.train(m.training)
    return new


def _norm(m: nn.Module, r: int, noise: float, gen: torch.Generator | None) -> nn.Module:
    """BatchNorm by gpd.md §1: γ, β replicated (+ε), statistics replicated, BN(r·z)/r."""
    assert isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d))
    cls = GPDBatchNorm1d if isinstance(m, nn.BatchNorm1d) else GPDBatchNorm2d
    new = cls(
        m.num_features * r,
        r,
        eps=m.eps,
        momentum=m.momentum,
        affine=m.affine,
        track_running_stats=m.track_running_stats,
    )
    ref = m.weight if m.affine else m.running_mean
    if ref is not None:
        new = new.to(device=ref.device, dtype=ref.dtype)
    with torch.no_grad():
        if m.affine:
            new.weight.copy_(replicate(m.weight, r, noise, gen))
            new.bias.copy_(replicate(m.bias, r, noise, gen))
        if m.track_running_stats:
            assert m.running_mean is not None and m.running_var is not None
            new.running_mean.copy_(replicate(m.running_mean, r))  # type: ignore[union-attr]
            new.running_var.copy_(replicate(m.running_var, r))  # type: ignore[union-attr]
            new.num_batches_tracked.copy_(m.num_batches_tracked)  # type: ignore[union-attr]
    new.train(m.training)
    return new


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
    if isinstance(ratio, bool) or not isinstance(ratio, int) or ratio < 2:
        raise ValueError(f"GPD expansion ratio must be an integer >= 2, got {ratio!r}")
    if not noise >= 0.0:
        raise ValueError(f"GPD noise must be >= 0, got {noise!r}")
    widening = plan(student)
    dt = copy.deepcopy(student)
    for name, w in widening.items():
        parent_name, _, attr = name.rpartition(".")
        parent = dt.get_submodule(parent_name)
        old = parent.get_submodule(attr)
        if isinstance(old, (nn.BatchNorm1d, nn.BatchNorm2d)):
            if not w.in_wide:  # BN on the raw input (before the first layer): unchanged
                continue
            new = _norm(old, ratio, noise, generator)
        elif not (w.in_wide or w.out_wide):  # a single-layer model: nothing to widen
            continue
        else:
            new = _dense(old, w, ratio, noise, generator)
        setattr(parent, attr, new)
    if isinstance(getattr(dt, "feature_dim", None), int):
        dt.feature_dim = student.feature_dim * ratio  # the penultimate width, now r× wider
    return dt
