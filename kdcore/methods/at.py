"""Zagoruyko & Komodakis (2017), "Paying More Attention to Attention: Improving the Performance of
Convolutional Neural Networks via Attention Transfer" (ICLR).

A spatial attention map Q = vec(Σ_c |A_c|^p) says where a layer "looks"; normalised, it is
independent of the feature scale and of the number of channels, so a thin student can match a
wide teacher without an adapter:

    loss = ce_weight · CE + (beta/2) · Σ_pairs mean_{batch, positions}(Q_s/‖Q_s‖ − Q_t/‖Q_t‖)²

The squared difference averaged over positions and the batch is the authors' `at_loss`; the paper
notes that its beta = 1000 is divided by the number of attention-map elements and the batch size,
which this mean does. Maps of different spatial size are matched by average-pooling the larger
feature map to the smaller one.
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
    pool_to_common,
    require_4d,
)
from kdcore.methods.base import MethodParams, StepOutputs
from kdcore.methods.registry import register


class ATParams(LayerParams):
    beta: float = Field(1000.0, ge=0, description="weight of the attention term (paper's β)")
    p: float = Field(2.0, gt=0, description="power on |activation| in the attention map")


def attention_map(features: Tensor, p: float) -> Tensor:
    """(B, C, H, W) → (B, H·W): channel mean of |A|^p, L2-normalised per row."""
    a = as_float(features).abs().pow(p).mean(1).flatten(1)
    return F.normalize(a, dim=1)


def at_pair_loss(student: Tensor, teacher: Tensor, p: float) -> Tensor:
    s, t = pool_to_common(student, teacher)
    return (attention_map(s, p) - attention_map(t, p)).pow(2).mean()


@register("at")
class AttentionTransfer(LayerTerm):
    params: ClassVar[type[MethodParams]] = ATParams
    hparams: ATParams

    def setup(
        self, student_features: dict[str, Tensor], teacher_features: dict[str, Tensor]
    ) -> None:
        p = self.hparams
        found = self.paired_features(student_features, teacher_features)
        for names, feats, key in zip(
            (p.student_layers, p.teacher_layers),
            found,
            ("student_layers", "teacher_layers"),
            strict=True,
        ):
            shapes = [(n, f.shape) for n, f in zip(names, feats, strict=True)]
            require_4d(shapes, f"{self.field}.{key}", "at")

    def distill_loss(self, out: StepOutputs) -> Tensor:
        p = self.hparams
        return p.beta / 2 * self.pair_sum(out, lambda s, t: at_pair_loss(s, t, p.p))
