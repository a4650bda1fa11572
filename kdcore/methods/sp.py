"""Tung & Mori (2019), "Similarity-Preserving Knowledge Distillation" (ICCV).

Inputs that the teacher finds similar should look similar to the student. Per batch, the b×b
Gram matrix G = F·Fᵀ of the flattened features, each row L2-normalised, is matched:

    loss = ce_weight · CE + gamma · Σ_pairs ‖G_t − G_s‖²_F / b²,   gamma = 3000

Only similarities between rows are compared, so the layers may differ in shape (any rank) and
need no adapter; features the same up to an orthogonal map (F_s = F_t·U) give zero loss.
"""

from __future__ import annotations

from typing import ClassVar

import torch.nn.functional as F
from pydantic import Field
from torch import Tensor

from kdcore.methods._common import (
    LayerParams,
    LayerTerm,
    as_float,
)
from kdcore.methods.base import MethodParams, StepOutputs
from kdcore.methods.registry import register


class SPParams(LayerParams):
    gamma: float = Field(3000.0, ge=0, description="weight of the similarity term (paper's γ)")


def similarity(features: Tensor) -> Tensor:
    """(B, ...) → (B, B): row-normalised Gram matrix of the flattened features."""
    f = as_float(features).flatten(1)
    return F.normalize(f @ f.t(), dim=1)


def sp_pair_loss(student: Tensor, teacher: Tensor) -> Tensor:
    b = student.shape[0]
    return (similarity(teacher) - similarity(student)).pow(2).sum() / (b * b)


@register("sp")
class SimilarityPreserving(LayerTerm):
    params: ClassVar[type[MethodParams]] = SPParams
    hparams: SPParams

    def distill_loss(self, out: StepOutputs) -> Tensor:
        return self.hparams.gamma * self.pair_sum(out, sp_pair_loss)
