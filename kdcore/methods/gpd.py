"""Guo et al. (ICLR 2025), "Gap Preserving Distillation by Building Bidirectional Mappings with A
Dynamic Teacher" (gpd.md §4): the student trains together with a wider dynamic teacher (DT) that
contains it (`kdcore.schemes.gpd`), so the teacher–student gap starts at zero and stays moderate.

    L_DT = CE(z_DT, y) + L_KD(z_DT, sg z_static)
    L_S  = CE(z_S, y)  + L_KD(z_S, sg z_static) + λ · SCE(z_S, softmax(sg z_DT))
    SCE(z, p) = 0.9 · Σ_k −p_k log σ(z)_k + 0.1 · mean_k(−log σ(z)_k)          (T = 1)

One backward of L_DT + L_S gives the reference's two backwards' summed gradient (both flow into
the shared parameters); the training loop clips it (`grad_clip`, 5 by default) and steps once.
`scenario: scratch` and `finetune` drop the static-teacher terms (no teacher in the spec);
`finetune` starts from `student.checkpoint`. L_KD is KD or DKD with the keys below.

The training loop trains a `GPDTrainee` (built by the pipeline for this method): its forward
returns the student's logits and, in train mode, also runs the DT, whose logits a hook on
`pair.dt` hands to this method.
"""

from __future__ import annotations

from typing import ClassVar, Literal

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import Tensor

from kdcore.methods._common import as_float
from kdcore.methods.base import Method, MethodParams, StepOutputs, masked_cross_entropy
from kdcore.methods.dkd import dkd_parts, dkd_targets
from kdcore.methods.kd import kd_kl
from kdcore.methods.registry import register

DT_LAYER = "pair.dt"


class GPDParams(MethodParams):
    scenario: Literal["teacher", "scratch", "finetune"] = Field(
        "teacher",
        description="teacher: a pre-trained static teacher teaches both; scratch: no teacher, "
        "student and DT from random weights; finetune: no teacher, from student.checkpoint",
    )
    ratio: int = Field(2, ge=2, le=8, description="r: the DT is r× wider (≈ r² the parameters)")
    noise: float = Field(
        1e-6, ge=0, le=1, description="std of the noise breaking the DT replicas' symmetry"
    )
    sce_weight: float = Field(3.0, ge=0, description="λ: weight of the DT → student SCE term")
    kd: Literal["dkd", "kd"] = Field("dkd", description="L_KD, the static-teacher term")
    temperature: float = Field(1.0, gt=0, description="T of L_KD")
    dkd_alpha: float = Field(1.0, ge=0, description="DKD's TCKD weight (kd: dkd)")
    dkd_beta: float = Field(1.0, ge=0, description="DKD's NCKD weight (kd: dkd)")
    warmup: int = Field(0, ge=0, description="epochs over which L_KD ramps up; 0: none")
    cbr: bool = Field(
        False,
        description="channel-branch reparameterization: train 3×3 convs and Linear layers as "
        "multi-branch blocks that merge back into one layer at the end",
    )
    grad_clip: float = Field(5.0, gt=0, description="gradient-norm clip (unless train.grad_clip)")


def soft_cross_entropy(logits: Tensor, target_probs: Tensor, smoothing: float = 0.1) -> Tensor:
    """SCE(z, p) of gpd.md §4, averaged over the batch: cross-entropy against `p` mixed with a
    uniform target (weight `smoothing`); `p` is a fixed target."""
    log_q = F.log_softmax(as_float(logits), dim=1)
    soft = -(target_probs.detach().float() * log_q).sum(1)
    uniform = -log_q.mean(1)
    return ((1 - smoothing) * soft + smoothing * uniform).mean()


@register("gpd")
class GapPreserving(Method):
    params: ClassVar[type[MethodParams]] = GPDParams
    trains_own_teacher: ClassVar[bool] = True
    scheme: ClassVar[str] = "gpd"
    hparams: GPDParams

    def __init__(self, params: MethodParams):
        super().__init__(params)
        # An instance attribute: whether a static teacher is consulted depends on the scenario.
        self.needs_teacher = self.hparams.scenario == "teacher"  # type: ignore[misc]

    def student_layers(self) -> list[str]:
        return [DT_LAYER]

    def kd_term(self, logits: Tensor, teacher_logits: Tensor, targets: Tensor) -> Tensor:
        """L_KD(z, sg z_static), with its warm-up."""
        p = self.hparams
        warm = 1.0 if p.warmup == 0 else min(self.epoch / p.warmup, 1.0)
        teacher = teacher_logits.detach()
        if p.kd == "kd":
            return warm * kd_kl(logits, teacher, p.temperature)
        tckd, nckd, _ = dkd_parts(logits, teacher, dkd_targets(targets, teacher), p.temperature)
        t2 = p.temperature**2
        return warm * t2 * (p.dkd_alpha * tckd.mean() + p.dkd_beta * nckd.mean())

    def losses(
        self, dt_logits: Tensor, student_logits: Tensor, targets: Tensor, teacher: Tensor | None
    ) -> tuple[Tensor, Tensor]:
        """(L_DT, L_S) of gpd.md §4."""
        l_dt = masked_cross_entropy(dt_logits, targets)
        l_s = masked_cross_entropy(student_logits, targets)
        if teacher is not None:
            l_dt = l_dt + self.kd_term(dt_logits, teacher, targets)
            l_s = l_s + self.kd_term(student_logits, teacher, targets)
        if self.hparams.sce_weight:
            dt_probs = F.softmax(as_float(dt_logits).detach(), dim=1)
            l_s = l_s + self.hparams.sce_weight * soft_cross_entropy(student_logits, dt_probs)
        return l_dt, l_s

    def forward(self, out: StepOutputs) -> Tensor:
        dt_logits = out.student_features.get(DT_LAYER)
        if dt_logits is None:
            raise RuntimeError("method gpd trains a GPDTrainee (the pipeline builds it)")
        teacher = out.teacher_logits if self.needs_teacher else None
        with torch.autocast(out.student_logits.device.type, enabled=False):
            l_dt, l_s = self.losses(dt_logits, out.student_logits, out.targets, teacher)
        return l_dt + l_s
