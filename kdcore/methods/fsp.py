"""Yim, Joo, Bae & Kim (2017), "A Gift from Knowledge Distillation: Fast Optimization, Network
Minimization and Transfer Learning" (CVPR).

What transfers is the "flow" between two layers of a network: the FSP matrix of two feature maps
F¹ (C₁ channels) and F² (C₂ channels) of the same resolution,

    G_ij = Σ_{s,t} F¹_{s,t,i} · F²_{s,t,j} / (h·w),     a C₁ × C₂ matrix per input,

    loss = ce_weight · CE + beta · mean_pairs mean_{batch, i, j} (G_t,ij − G_s,ij)²

Each entry of a pair names two layers of one network (e.g. `[layer1, layer2]`); the student's
and the teacher's matrices are compared entry by entry, so their channel counts must agree
(the paper distils between ResNets of equal widths). If the two layers of a pair differ in
resolution, the larger map is average-pooled to the smaller (as RepDistiller does).

The squared difference is averaged over the matrix entries (RepDistiller's FSP loss) rather than
summed (the paper's ‖G_t − G_s‖²): the paper trains FSP as a stage of its own before the task,
while here it shares one loss with CE, and the sum, C₁·C₂ times larger, drowns CE (about 94
against 2.4 for resnet14 → resnet8 on digits at the start); the mean is about CE's size there.
"""

from __future__ import annotations

from typing import ClassVar

import torch
from pydantic import Field, model_validator
from torch import Tensor

from kdcore.errors import InputError
from kdcore.methods._common import (
    DistillParams,
    DistillTerm,
    as_float,
    field_error,
    pool_to_common,
    require_4d,
    require_features,
)
from kdcore.methods.base import MethodParams, StepOutputs
from kdcore.methods.registry import register


class FSPParams(DistillParams):
    student_pairs: list[tuple[str, str]] = Field(
        ..., min_length=1, description="pairs of student layers, e.g. [[layer1, layer2]]"
    )
    teacher_pairs: list[tuple[str, str]] = Field(
        ..., min_length=1, description="pairs of teacher layers, one per student pair"
    )
    beta: float = Field(1.0, ge=0, description="weight of the FSP term")

    @model_validator(mode="after")
    def _same_length(self) -> FSPParams:
        if len(self.student_pairs) != len(self.teacher_pairs):
            raise field_error(
                type(self).__name__,
                ("teacher_pairs",),
                f"give one teacher pair per student pair: {len(self.student_pairs)} student "
                f"pairs, {len(self.teacher_pairs)} teacher pairs",
                self.teacher_pairs,
            )
        return self


def fsp_matrix(first: Tensor, second: Tensor) -> Tensor:
    """(B, C₁, H, W), (B, C₂, H', W') → (B, C₁, C₂), pooling the larger map to the smaller."""
    a, b = pool_to_common(as_float(first), as_float(second))
    hw = a.shape[2] * a.shape[3]
    return torch.einsum("bip,bjp->bij", a.flatten(2), b.flatten(2)) / hw


def _unique(names: list[tuple[str, str]]) -> list[str]:
    return list(dict.fromkeys(n for pair in names for n in pair))


@register("fsp")
class FlowOfSolution(DistillTerm):
    params: ClassVar[type[MethodParams]] = FSPParams
    hparams: FSPParams

    def student_layers(self) -> list[str]:
        return _unique(self.hparams.student_pairs)

    def teacher_layers(self) -> list[str]:
        return _unique(self.hparams.teacher_pairs)

    def setup(
        self, student_features: dict[str, Tensor], teacher_features: dict[str, Tensor]
    ) -> None:
        p = self.hparams
        shapes = {}
        for who, pairs, feats in (
            ("student", p.student_pairs, student_features),
            ("teacher", p.teacher_pairs, teacher_features),
        ):
            field = f"{self.field}.{who}_pairs"
            names = _unique(pairs)
            found = require_features(feats, names, field)
            require_4d([(n, f.shape) for n, f in zip(names, found, strict=True)], field, "fsp")
            shapes[who] = [(feats[a].shape[1], feats[b].shape[1]) for a, b in pairs]
        for i, (s, t) in enumerate(zip(shapes["student"], shapes["teacher"], strict=True)):
            if s != t:
                raise InputError(
                    f"{self.field}.teacher_pairs",
                    f"pair {i}: the student's FSP matrix {p.student_pairs[i]} is {s[0]}×{s[1]} "
                    f"but the teacher's {p.teacher_pairs[i]} is {t[0]}×{t[1]}; FSP compares "
                    "them entry by entry, so pick layers with the same channel counts in "
                    f"{self.field}.student_pairs and {self.field}.teacher_pairs (or use at, "
                    "fitnets or sp, which need no matching widths)",
                )

    def distill_loss(self, out: StepOutputs) -> Tensor:
        p = self.hparams
        sf, tf = out.student_features, out.teacher_features
        losses = []
        for (s1, s2), (t1, t2) in zip(p.student_pairs, p.teacher_pairs, strict=True):
            g_s = fsp_matrix(sf[s1], sf[s2])
            g_t = fsp_matrix(tf[t1].detach(), tf[t2].detach())
            losses.append((g_t - g_s).pow(2).mean())
        return p.beta * torch.stack(losses).mean()
