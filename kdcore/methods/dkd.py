"""Zhao, Cui, Song, Qiu & Liang (2022), "Decoupled Knowledge Distillation" (CVPR).

KL(p_t ‖ p_s) splits exactly into a target-class part and a non-target part:
    KL = TCKD + (1 − p_t,target) · NCKD,
TCKD = KL(b_t ‖ b_s) with b = [p_target, 1 − p_target], NCKD = KL(p̂_t ‖ p̂_s) over the
non-target classes renormalised. In KD the NCKD part is suppressed exactly when the teacher is
confident; DKD weighs the two freely:

    loss = ce_weight · CE + warmup · T² · (alpha · TCKD + beta · NCKD),   warmup = min(epoch/W, 1)

as in the authors' code (mdistiller), where the warm-up scales the whole DKD term. T = 4,
alpha = 1, beta = 8, W = 20 are the paper's CIFAR-100 settings (W is for 240-epoch schedules;
scale it with shorter ones).

Unlabelled rows (target −1): DKD needs a target class to split on, so those rows use the
teacher's argmax as their target; they still get no CE.
"""

from __future__ import annotations

from typing import ClassVar

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import Tensor

from kdcore.methods._common import DistillParams, DistillTerm, as_float
from kdcore.methods.base import MethodParams, StepOutputs
from kdcore.methods.registry import register


class DKDParams(DistillParams):
    alpha: float = Field(1.0, ge=0, description="weight of TCKD (target vs rest)")
    beta: float = Field(8.0, ge=0, description="weight of NCKD (among non-target classes)")
    temperature: float = Field(4.0, gt=0, description="softening temperature T")
    warmup: int = Field(20, ge=0, description="epochs over which the DKD term ramps up; 0: none")


def dkd_parts(
    student_logits: Tensor, teacher_logits: Tensor, target: Tensor, temperature: float
) -> tuple[Tensor, Tensor, Tensor]:
    """Per-row (TCKD, NCKD, teacher non-target mass), unscaled (no T²).

    The non-target classes are gathered out (not masked with a large negative), so the split
    is exact: KL(p_t ‖ p_s) = TCKD + mass · NCKD to rounding.
    """
    zs = as_float(student_logits) / temperature
    zt = as_float(teacher_logits) / temperature
    b, k = zs.shape
    is_target = F.one_hot(target, k).bool()
    others_s = zs[~is_target].view(b, k - 1)
    others_t = zt[~is_target].view(b, k - 1)
    # log b = [log p_target, log(1 − p_target)], both from log-sum-exps (stable).
    lse_s, lse_t = zs.logsumexp(1), zt.logsumexp(1)
    log_b_s = torch.stack([zs[is_target] - lse_s, others_s.logsumexp(1) - lse_s], 1)
    log_b_t = torch.stack([zt[is_target] - lse_t, others_t.logsumexp(1) - lse_t], 1)
    tckd = (log_b_t.exp() * (log_b_t - log_b_s)).sum(1)
    log_hat_s = F.log_softmax(others_s, 1)
    log_hat_t = F.log_softmax(others_t, 1)
    nckd = (log_hat_t.exp() * (log_hat_t - log_hat_s)).sum(1)
    return tckd, nckd, log_b_t[:, 1].exp()


def dkd_targets(targets: Tensor, teacher_logits: Tensor) -> Tensor:
    """The label where there is one, else the teacher's top class."""
    return torch.where(targets >= 0, targets, teacher_logits.argmax(1))


@register("dkd")
class DecoupledKD(DistillTerm):
    params: ClassVar[type[MethodParams]] = DKDParams
    hparams: DKDParams

    def warmup_factor(self) -> float:
        w = self.hparams.warmup
        return 1.0 if w == 0 else min(self.epoch / w, 1.0)

    def distill_loss(self, out: StepOutputs) -> Tensor:
        assert out.teacher_logits is not None, "dkd needs teacher logits"
        p = self.hparams
        teacher = out.teacher_logits.detach()
        target = dkd_targets(out.targets, teacher)
        tckd, nckd, _ = dkd_parts(out.student_logits, teacher, target, p.temperature)
        t2 = p.temperature**2
        return self.warmup_factor() * t2 * (p.alpha * tckd.mean() + p.beta * nckd.mean())
