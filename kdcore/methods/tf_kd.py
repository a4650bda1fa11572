"""Yuan, Tay, Li, Wang & Feng (2020), "Revisiting Knowledge Distillation via Label Smoothing
Regularization" (CVPR): teacher-free KD, the virtual-teacher version (Tf-KD_reg).

A hand-made "teacher" that is always right: p_d = a on the true class and (1 − a)/(K − 1) on
every other class (a = 0.99). The student learns from it as from soft targets:

    loss = (1 − α)·CE(z, y) + α·m·KL(softmax(p_d/τ) ‖ softmax(z))

with α = 0.1, τ = 20 (it softens the virtual teacher only; the student's logits are not divided
by τ) and m = 100, as in the paper's code. The KL is summed over classes and averaged over the
labelled rows of the batch (an unlabelled row has no true class, so no virtual teacher; CE skips
it too). The paper's code averages over classes as well (`nn.KLDivLoss()`'s default mean), which
is this term divided by K: scale `multiplier` by 1/K to reproduce its numbers exactly.

No real teacher is consulted (`needs_teacher` is False): the spec still names one, which is
evaluated for the report's `gap` and `compression` only (a report without a teacher would need
the service's evaluation rows and API to accept a missing teacher first).
"""

from __future__ import annotations

from typing import ClassVar

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import Tensor

from kdcore.methods._common import DistillTerm, as_float
from kdcore.methods.base import MethodParams, StepOutputs, masked_cross_entropy
from kdcore.methods.registry import register


class TFKDParams(MethodParams):
    alpha: float = Field(0.1, ge=0, le=1, description="weight of the virtual-teacher term")
    temperature: float = Field(20.0, gt=0, description="τ, applied to the virtual teacher")
    multiplier: float = Field(100.0, ge=0, description="m, scales the KL term")
    correct_prob: float = Field(
        0.99, gt=0, le=1, description="a, the virtual teacher's probability of the true class"
    )


def virtual_teacher(targets: Tensor, num_classes: int, correct_prob: float, like: Tensor) -> Tensor:
    """p_d for each (labelled) row: `correct_prob` on its class, the rest shared evenly."""
    rest = (1.0 - correct_prob) / (num_classes - 1)
    p_d = torch.full((len(targets), num_classes), rest, dtype=like.dtype, device=like.device)
    return p_d.scatter(1, targets[:, None], correct_prob)


@register("tf_kd")
class TeacherFreeKD(DistillTerm):
    params: ClassVar[type[MethodParams]] = TFKDParams
    ce_keys: ClassVar[tuple[str, ...]] = ("alpha",)
    needs_teacher: ClassVar[bool] = False
    scheme: ClassVar[str] = "self"
    hparams: TFKDParams

    def distill_loss(self, out: StepOutputs) -> Tensor:
        p = self.hparams
        z = as_float(out.student_logits)
        labelled = out.targets >= 0
        if not bool(labelled.any()):
            return (z * 0.0).sum()  # a zero that keeps the graph (no labelled row here)
        z, y = z[labelled], out.targets[labelled]
        p_d = virtual_teacher(y, z.shape[1], p.correct_prob, z)
        log_q = F.log_softmax(p_d / p.temperature, dim=1)
        log_p = F.log_softmax(z, dim=1)
        return p.multiplier * F.kl_div(log_p, log_q, reduction="batchmean", log_target=True)

    def forward(self, out: StepOutputs) -> Tensor:
        p = self.hparams
        with torch.autocast(out.student_logits.device.type, enabled=False):
            term = self.distill_loss(out)
        if p.alpha == 1.0:
            return term
        return p.alpha * term + (1 - p.alpha) * masked_cross_entropy(
            out.student_logits, out.targets
        )
