"""Peng, Jin, Liu, Zhou, Wu, Liu, Li & Zhang (2019), "Correlation Congruence for Knowledge
Distillation" (ICCV).

Besides each instance, transfer the correlation between instances: the b×b matrix of a Gaussian
RBF kernel k(x, y) = exp(−2γ + 2γ·⟨x, y⟩) on L2-normalised embeddings (= exp(−γ‖x − y‖²)), in
the paper's P-th order Taylor approximation

    C_ij = Σ_{p=0..P} e^{−2γ} (2γ)^p / p! · ⟨x_i, x_j⟩^p

    loss = ce_weight · CE + beta · Σ_pairs mean_ij (C^s_ij − C^t_ij)²

γ = 0.4 and P = 2 are the paper's; beta = 100 is the weight used with this kernel form in
Knowledge-Distillation-Zoo (RepDistiller's 0.02 belongs to a different, kernel-free
simplification on learned 128-d embeddings). As in RKD, the embeddings are the named layers'
outputs, flattened, by default the zoo's `pool` layer; the widths may differ.
"""

from __future__ import annotations

import math
from typing import ClassVar

import torch.nn.functional as F
from pydantic import Field
from torch import Tensor

from kdcore.methods._common import (
    EmbeddingParams,
    LayerTerm,
    as_float,
)
from kdcore.methods.base import MethodParams, StepOutputs
from kdcore.methods.registry import register


class CCParams(EmbeddingParams):
    beta: float = Field(100.0, ge=0, description="weight of the correlation term")
    gamma: float = Field(0.4, gt=0, description="Gaussian RBF kernel parameter γ")
    order: int = Field(2, ge=0, le=10, description="order P of the kernel's Taylor expansion")


def correlation(features: Tensor, gamma: float, order: int) -> Tensor:
    """(B, ...) → (B, B) Taylor-approximated Gaussian-kernel correlation of the rows."""
    f = F.normalize(as_float(features).flatten(1), dim=1)
    sim = f @ f.t()
    out = sim.new_zeros(sim.shape)
    for p in range(order + 1):
        out = out + math.exp(-2 * gamma) * (2 * gamma) ** p / math.factorial(p) * sim.pow(p)
    return out


def cc_pair_loss(student: Tensor, teacher: Tensor, gamma: float, order: int) -> Tensor:
    return (correlation(student, gamma, order) - correlation(teacher, gamma, order)).pow(2).mean()


@register("cc")
class CorrelationCongruence(LayerTerm):
    params: ClassVar[type[MethodParams]] = CCParams
    hparams: CCParams

    def distill_loss(self, out: StepOutputs) -> Tensor:
        p = self.hparams
        return p.beta * self.pair_sum(out, lambda s, t: cc_pair_loss(s, t, p.gamma, p.order))
