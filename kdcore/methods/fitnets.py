"""Romero, Ballas, Kahou, Chassang, Gatta & Bengio (2015), "FitNets: Hints for Thin Deep Nets".

The student's intermediate features ("guided layers") are trained to predict the teacher's
("hint layers") through a learned regressor r:

    loss = ce_weight · CE + beta · Σ_pairs mean((F_t − r(F_s))²)

r is a 1×1 convolution for (B, C, H, W) maps and a linear layer for (B, D) or (B, N, D)
features, sized in `setup` from a dry forward; it trains with the student and is saved in the
method's state. Where the spatial sizes differ, the larger map is average-pooled to the smaller.
The squared error is a per-element mean (RepDistiller's HintLoss) rather than the paper's
½‖·‖² sum, so beta = 100, RepDistiller's single-stage weight, keeps its meaning.
"""

from __future__ import annotations

from typing import ClassVar

from pydantic import Field
from torch import Tensor, nn

from kdcore.errors import InputError
from kdcore.methods._common import (
    LayerParams,
    LayerTerm,
    as_float,
    layer_pairs,
    pool_to_common,
)
from kdcore.methods.base import MethodParams, StepOutputs
from kdcore.methods.registry import register


class FitNetsParams(LayerParams):
    beta: float = Field(100.0, ge=0, description="weight of the hint (feature regression) term")


def regressor(student: tuple[int, ...], teacher: tuple[int, ...]) -> nn.Module | None:
    """The adapter from a student feature shape to a teacher one; None if they cannot match."""
    if len(student) == 4 and len(teacher) == 4:
        return nn.Conv2d(student[1], teacher[1], kernel_size=1)
    if len(student) == len(teacher) == 2 or (
        len(student) == len(teacher) == 3 and student[1] == teacher[1]
    ):
        return nn.Linear(student[-1], teacher[-1])
    return None


@register("fitnets")
class FitNets(LayerTerm):
    params: ClassVar[type[MethodParams]] = FitNetsParams
    hparams: FitNetsParams

    def __init__(self, params: MethodParams):
        super().__init__(params)
        self.regressors = nn.ModuleList()

    def setup(
        self, student_features: dict[str, Tensor], teacher_features: dict[str, Tensor]
    ) -> None:
        p = self.hparams
        s_feats, t_feats = self.paired_features(student_features, teacher_features)
        regs = []
        for i, (s, t) in enumerate(zip(s_feats, t_feats, strict=True)):
            reg = regressor(tuple(s.shape), tuple(t.shape))
            if reg is None:
                raise InputError(
                    f"{self.field}.teacher_layers",
                    f"pair {i}: student layer {p.student_layers[i]!r} outputs {tuple(s.shape)}, "
                    f"teacher layer {p.teacher_layers[i]!r} outputs {tuple(t.shape)}; FitNets "
                    "pairs two (B, C, H, W) maps, two (B, D) vectors or two (B, N, D) token "
                    "sequences of the same length",
                )
            regs.append(reg)
        self.regressors = nn.ModuleList(regs)

    def distill_loss(self, out: StepOutputs) -> Tensor:
        if len(self.regressors) != len(self.hparams.student_layers):
            raise RuntimeError("fitnets: call setup() with a dry forward's features first")
        total: Tensor | None = None
        for reg, (s, t) in zip(self.regressors, layer_pairs(out, self.hparams), strict=True):
            s, t = as_float(s), as_float(t)
            if s.dim() == 4:
                s, t = pool_to_common(s, t)
            loss = (reg(s) - t).pow(2).mean()
            total = loss if total is None else total + loss
        assert total is not None
        return self.hparams.beta * total
