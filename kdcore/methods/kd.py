"""Hinton, Vinyals & Dean (2015), "Distilling the Knowledge in a Neural Network".

loss = alpha * T² * KL(softmax(t/T) ‖ softmax(s/T)) + (1 − alpha) * CE(s, y)

The T² factor keeps the soft-target gradients on the same scale as the hard-label ones when T
changes. The KL term uses every row; the CE term only the labelled ones, so an unlabelled
transfer set is learnt from the teacher alone. Inside `combined`, a kd term is the T²·KL part
alone (its `alpha` mixes in CE, which `combined` adds once itself).
"""

from __future__ import annotations

from typing import ClassVar

import torch.nn.functional as F
from pydantic import Field
from torch import Tensor

from kdcore.methods._common import DistillTerm
from kdcore.methods.base import MethodParams, StepOutputs, masked_cross_entropy
from kdcore.methods.registry import register


class KDParams(MethodParams):
    temperature: float = Field(4.0, gt=0, description="softening temperature T")
    alpha: float = Field(0.9, ge=0, le=1, description="weight of the soft-target term")


def kd_kl(student_logits: Tensor, teacher_logits: Tensor, temperature: float) -> Tensor:
    """T² · KL(p_teacher^T ‖ p_student^T), averaged over the batch; the teacher is a fixed target
    (no gradient reaches it, even where its logits were computed with autograd on)."""
    t = temperature
    log_p_s = F.log_softmax(student_logits.float() / t, dim=1)
    log_p_t = F.log_softmax(teacher_logits.detach().float() / t, dim=1)
    return F.kl_div(log_p_s, log_p_t, reduction="batchmean", log_target=True) * (t * t)


@register("kd")
class HintonKD(DistillTerm):
    params: ClassVar[type[MethodParams]] = KDParams
    ce_keys: ClassVar[tuple[str, ...]] = ("alpha",)
    hparams: KDParams

    def distill_loss(self, out: StepOutputs) -> Tensor:
        assert out.teacher_logits is not None, "kd needs teacher logits"
        return kd_kl(out.student_logits, out.teacher_logits, self.hparams.temperature)

    def forward(self, out: StepOutputs) -> Tensor:
        p = self.hparams
        soft = self.distill_loss(out)
        if p.alpha == 1.0:
            return soft
        return p.alpha * soft + (1 - p.alpha) * masked_cross_entropy(
            out.student_logits, out.targets
        )
