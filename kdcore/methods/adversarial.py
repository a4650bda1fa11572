"""Adversarial KD (the survey's GAN-KD family, e.g. Wang et al. 2018, "KDGAN"; Xu et al. 2018,
"Training Shallow and Thin Networks for Acceleration via Knowledge Distillation with Conditional
Adversarial Networks"): a discriminator D learns to tell the teacher's class probabilities from
the student's, and the student learns to fool it, next to CE and KD:

    L_s = ce_weight·CE(z_s, y) + α·T²·KL(σ(z_t/T) ‖ σ(z_s/T)) + β·L_GAN
    L_GAN = BCE(D(σ(z_t)), 1) + BCE(D(R(σ(z_s))), 0)

D is a small MLP inside this method, so it is optimised by the job's one optimizer and saved in
every checkpoint (never exported). R is a gradient-reversal layer (identity forward, −gradient
backward): one backward of L_s lowers D's classification loss while the student receives the
reversed gradient, i.e. it ascends D's loss on its own outputs: the minimax GAN game in a single
optimizer step. The teacher's probabilities are constants (no gradient reaches the teacher).
D's input width (the number of classes) is taken at the first step (`LazyLinear`); every layer
of D is lazy, so all of it is initialised inside the training loop, after its seeding: the run
does not depend on what else used the random generator before the method was built.
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import Tensor, nn

from kdcore.methods._common import as_float
from kdcore.methods.base import Method, MethodParams, StepOutputs, masked_cross_entropy
from kdcore.methods.kd import kd_kl
from kdcore.methods.registry import register


class AdversarialParams(MethodParams):
    ce_weight: float = Field(1.0, ge=0, description="weight of CE on the labelled rows")
    alpha: float = Field(1.0, ge=0, description="α, weight of the T²·KL term")
    beta: float = Field(0.1, ge=0, description="β, weight of the adversarial (GAN) term")
    temperature: float = Field(4.0, gt=0, description="T of the KL term (D sees T = 1)")
    hidden: int = Field(64, ge=0, le=4096, description="D's hidden width (0: a linear D)")


class _Reverse(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, x: Tensor) -> Tensor:
        return x.view_as(x)

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> Tensor:
        return -grad


def reverse_gradient(x: Tensor) -> Tensor:
    """Identity forward; the gradient flowing back through it is negated."""
    return _Reverse.apply(x)


@register("adversarial")
class AdversarialKD(Method):
    params: ClassVar[type[MethodParams]] = AdversarialParams
    hparams: AdversarialParams

    def __init__(self, params: MethodParams):
        super().__init__(params)
        h = self.hparams.hidden
        self.discriminator: nn.Module = (
            nn.Sequential(nn.LazyLinear(h), nn.LeakyReLU(0.2), nn.LazyLinear(1))
            if h
            else nn.LazyLinear(1)
        )

    def gan_loss(self, student_logits: Tensor, teacher_logits: Tensor) -> Tensor:
        p_t = F.softmax(teacher_logits.detach().float(), dim=1)
        p_s = reverse_gradient(F.softmax(as_float(student_logits), dim=1))
        d_t = self.discriminator(p_t.to(p_s.dtype)).squeeze(1)
        d_s = self.discriminator(p_s).squeeze(1)
        return F.binary_cross_entropy_with_logits(
            d_t, torch.ones_like(d_t)
        ) + F.binary_cross_entropy_with_logits(d_s, torch.zeros_like(d_s))

    def forward(self, out: StepOutputs) -> Tensor:
        assert out.teacher_logits is not None, "adversarial needs teacher logits"
        p = self.hparams
        with torch.autocast(out.student_logits.device.type, enabled=False):
            loss = p.beta * self.gan_loss(out.student_logits, out.teacher_logits)
            if p.alpha:
                loss = loss + p.alpha * kd_kl(out.student_logits, out.teacher_logits, p.temperature)
        if p.ce_weight:
            loss = loss + p.ce_weight * masked_cross_entropy(out.student_logits, out.targets)
        return loss
