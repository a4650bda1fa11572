"""Zhang, Song, Gao, Chen, Bao & Ma (2019), "Be Your Own Teacher: Improve the Performance of
Convolutional Neural Networks via Self Distillation" (ICCV): auxiliary classifier heads on the
student's shallow stages, each taught by the student's own deepest output.

    L = CE(q_C, y) + Σ_i [ (1 − α)·CE(q_i, y) + α·T²·KL(σ(sg q_C/T) ‖ σ(q_i/T))
                           + λ·‖F_i − sg F_C‖² ]

q_C are the student's logits (the deepest "head"), F_C the output of `final_stage` (average
pooled to (B, D) when it is a feature map); for each shallow stage i of `stages`, an auxiliary
head maps the stage's output to F_i (B, D) (a 3x3 conv bottleneck to D channels + BN + ReLU +
global average pool, or Linear + ReLU for (B, C) features; this is the feature-alignment
projection) and a linear classifier on F_i gives q_i. `sg` stops the gradient: the deeper
section is the teacher of the shallower ones. The deepest head has CE only (weight 1, as in the
paper's code). ‖·‖² is summed over the D features and averaged over the batch; KL is averaged
over the batch (every row); CE over the labelled rows only.

The heads live in this method (an `nn.Module`), so the job's one optimizer trains them with the
student and every checkpoint saves them; they are never exported. They are built in `setup()`
from the dry forward's feature shapes and `num_classes` (the width of the student's logits, set
by the trainer), initialised from a fixed seed so the run does not depend on what used the
random generator before. No teacher is consulted (`needs_teacher` is False).
"""

from __future__ import annotations

from typing import ClassVar

import torch
from pydantic import Field, model_validator
from torch import Tensor, nn

from kdcore.errors import InputError
from kdcore.methods._common import as_float, field_error, require_features
from kdcore.methods.base import Method, MethodParams, StepOutputs, masked_cross_entropy
from kdcore.methods.kd import kd_kl
from kdcore.methods.registry import register

HEAD_SEED = 0


class BYOTParams(MethodParams):
    stages: list[str] = Field(
        ..., min_length=1, description="shallow student modules that get an auxiliary head"
    )
    final_stage: str = Field(
        ..., description="the deepest student module before the classifier (F_C), e.g. layer3"
    )
    alpha: float = Field(0.3, ge=0, le=1, description="α, weight of the KL term (CE: 1 − α)")
    temperature: float = Field(3.0, gt=0, description="T of the KL term")
    feature_weight: float = Field(0.03, ge=0, description="λ, weight of ‖F_i − F_C‖²")

    @model_validator(mode="after")
    def _distinct(self) -> BYOTParams:
        if len(set(self.stages)) != len(self.stages) or self.final_stage in self.stages:
            raise field_error(
                "BYOTParams",
                ("stages",),
                f"name each shallow stage once and not the final stage {self.final_stage!r}",
                self.stages,
            )
        return self


def pooled(f: Tensor) -> Tensor:
    """(B, C, H, W) → (B, C) by global average pooling; (B, D) as it is."""
    return f.mean(dim=(2, 3)) if f.dim() == 4 else f


class AuxHead(nn.Module):
    """Bottleneck to the deepest stage's width D (the feature F_i), then a linear classifier."""

    def __init__(self, shape: torch.Size, width: int, num_classes: int):
        super().__init__()
        c = shape[1]
        self.body: nn.Module = (
            nn.Sequential(
                nn.Conv2d(c, width, 3, padding=1, bias=False),
                nn.BatchNorm2d(width),
                nn.ReLU(),
                nn.AdaptiveAvgPool2d(1),
                nn.Flatten(1),
            )
            if len(shape) == 4
            else nn.Sequential(nn.Linear(c, width), nn.ReLU())
        )
        self.fc = nn.Linear(width, num_classes)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        feature = self.body(x)
        return feature, self.fc(feature)


def _check_shape(name: str, shape: torch.Size, field: str) -> None:
    if len(shape) not in (2, 4):
        raise InputError(
            field,
            f"byot needs (B, C, H, W) or (B, D) stage outputs; {name!r} outputs {tuple(shape)}; "
            "pick a block (e.g. resnet layer1..3, convnet block1..)",
        )


@register("byot")
class BeYourOwnTeacher(Method):
    params: ClassVar[type[MethodParams]] = BYOTParams
    needs_teacher: ClassVar[bool] = False
    scheme: ClassVar[str] = "self"
    hparams: BYOTParams

    def __init__(self, params: MethodParams):
        super().__init__(params)
        self.heads = nn.ModuleList()

    def student_layers(self) -> list[str]:
        return [*self.hparams.stages, self.hparams.final_stage]

    def setup(
        self, student_features: dict[str, Tensor], teacher_features: dict[str, Tensor]
    ) -> None:
        p = self.hparams
        shallow = require_features(student_features, p.stages, "method.stages")
        (final,) = require_features(student_features, [p.final_stage], "method.final_stage")
        _check_shape(p.final_stage, final.shape, "method.final_stage")
        for name, f in zip(p.stages, shallow, strict=True):
            _check_shape(name, f.shape, "method.stages")
        if self.num_classes is None:
            raise RuntimeError("byot: num_classes (the student's logits width) is not set")
        width = final.shape[1]
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(HEAD_SEED)
            self.heads = nn.ModuleList(AuxHead(f.shape, width, self.num_classes) for f in shallow)

    def forward(self, out: StepOutputs) -> Tensor:
        p = self.hparams
        assert len(self.heads) == len(p.stages), "byot: setup() builds the heads first"
        with torch.autocast(out.student_logits.device.type, enabled=False):
            q_c = as_float(out.student_logits)
            f_c = pooled(as_float(out.student_features[p.final_stage])).detach()
            loss = masked_cross_entropy(q_c, out.targets)
            for name, head in zip(p.stages, self.heads, strict=True):
                f_i, q_i = head(as_float(out.student_features[name]))
                loss = loss + (1 - p.alpha) * masked_cross_entropy(q_i, out.targets)
                if p.alpha:
                    loss = loss + p.alpha * kd_kl(q_i, q_c, p.temperature)
                if p.feature_weight:
                    sq = (f_i - f_c.to(f_i.dtype)).pow(2).sum(dim=1).mean()
                    loss = loss + p.feature_weight * sq
        return loss
