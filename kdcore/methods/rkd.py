"""Park, Kim, Lu & Cho (2019), "Relational Knowledge Distillation" (CVPR).

Instead of matching each embedding, match the structure of the batch: pairwise distances
(normalised by their mean, so the scale of the embedding space does not matter) and the angles
of every triplet. Both are invariant to rotation, translation and scale, so a student whose
embedding is c·R·e_t + b has loss zero, whatever its width:

    ψ_D(i, j) = ‖e_i − e_j‖ / μ,      μ = mean of the non-zero pairwise distances
    ψ_A(i, j, k) = ⟨(e_j − e_i)/‖·‖, (e_k − e_i)/‖·‖⟩
    loss = ce_weight · CE + Σ_pairs [distance_weight · Huber(ψ_D^s, ψ_D^t)
                                      + angle_weight · Huber(ψ_A^s, ψ_A^t)]

Huber is smooth-L1 (δ = 1), averaged over all b² distances and b³ angles (the authors' code).
Embeddings are the named layers' outputs, flattened; by default the zoo's `pool` layer, the
embedding just before the classifier. The angle term holds b²·D and b³ values, so it is meant
for embeddings, not for large feature maps.
"""

from __future__ import annotations

from typing import ClassVar

import torch
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


class RKDParams(EmbeddingParams):
    distance_weight: float = Field(25.0, ge=0, description="weight of the distance term")
    angle_weight: float = Field(50.0, ge=0, description="weight of the angle term")


def distance_potential(e: Tensor) -> Tensor:
    """(B, D) → (B, B) pairwise distances divided by their mean over distinct pairs."""
    d = torch.cdist(e, e, compute_mode="donot_use_mm_for_euclid_dist")
    positive = d[d > 0]
    mean = positive.mean() if positive.numel() else d.new_ones(())
    return d / mean


def angle_potential(e: Tensor) -> Tensor:
    """(B, D) → (B, B, B): cosine of the angle at e_i between e_j and e_k."""
    diff = F.normalize(e.unsqueeze(0) - e.unsqueeze(1), p=2, dim=2)  # [i, j] = e_j − e_i
    return torch.bmm(diff, diff.transpose(1, 2))


def rkd_pair_losses(student: Tensor, teacher: Tensor) -> tuple[Tensor, Tensor]:
    """(distance loss, angle loss) between two batches of embeddings."""
    s, t = as_float(student).flatten(1), as_float(teacher).flatten(1)
    with torch.no_grad():
        d_t, a_t = distance_potential(t), angle_potential(t)
    dist = F.smooth_l1_loss(distance_potential(s), d_t)
    angle = F.smooth_l1_loss(angle_potential(s), a_t)
    return dist, angle


@register("rkd")
class RelationalKD(LayerTerm):
    params: ClassVar[type[MethodParams]] = RKDParams
    hparams: RKDParams

    def distill_loss(self, out: StepOutputs) -> Tensor:
        p = self.hparams

        def pair(s: Tensor, t: Tensor) -> Tensor:
            dist, angle = rkd_pair_losses(s, t)
            return p.distance_weight * dist + p.angle_weight * angle

        return self.pair_sum(out, pair)
