"""What the response-, feature- and relation-based methods share (no method is registered here).

Every distillation method is `ce_weight · CE(labelled rows) + its distillation term`. Keeping the
term separate (`DistillTerm.distill_loss`) is what lets `combined` add several methods' terms to
one cross-entropy instead of counting CE once per method.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from pydantic import Field, ValidationError, model_validator
from pydantic_core import InitErrorDetails, PydanticCustomError
from torch import Tensor

from kdcore.errors import InputError
from kdcore.methods.base import Method, MethodParams, StepOutputs, masked_cross_entropy


def field_error(
    model: str, loc: tuple[str | int, ...], message: str, value: Any
) -> ValidationError:
    """A pydantic error at `loc` (not at the model's root), so the spec error names the key."""
    return ValidationError.from_exception_data(
        model,
        [
            InitErrorDetails(
                type=PydanticCustomError("value_error", message),
                loc=loc,
                input=value,
            )
        ],
    )


class DistillParams(MethodParams):
    ce_weight: float = Field(
        1.0, ge=0, description="weight of cross-entropy on the labelled rows (0: teacher only)"
    )


class LayerParams(DistillParams):
    """Pairs of hooked layers: `student_layers[i]` is matched with `teacher_layers[i]`."""

    student_layers: list[str] = Field(..., min_length=1, description="student module names")
    teacher_layers: list[str] = Field(..., min_length=1, description="teacher module names")

    @model_validator(mode="after")
    def _same_length(self) -> LayerParams:
        if len(self.student_layers) != len(self.teacher_layers):
            raise field_error(
                type(self).__name__,
                ("teacher_layers",),
                f"give one teacher layer per student layer: {len(self.student_layers)} student "
                f"layers, {len(self.teacher_layers)} teacher layers",
                self.teacher_layers,
            )
        return self


class EmbeddingParams(LayerParams):
    """Layer pairs defaulting to the zoo's `pool` embedding (the relation methods' input)."""

    student_layers: list[str] = Field(
        default_factory=lambda: ["pool"], min_length=1, description="student embedding layers"
    )
    teacher_layers: list[str] = Field(
        default_factory=lambda: ["pool"], min_length=1, description="teacher embedding layers"
    )


class DistillTerm(Method):
    """A method whose loss is `ce_weight · CE + distill_loss`; `combined` reuses `distill_loss`.

    `ce_keys` are the spec keys that weigh CE against the term; a `combined` term may not set
    them, since `combined` adds CE once. `field` is where this method's keys sit in the spec
    (`method`, or `method.terms.<i>` inside `combined`), for error messages.
    """

    params: ClassVar[type[MethodParams]] = DistillParams
    ce_keys: ClassVar[tuple[str, ...]] = ("ce_weight",)

    def __init__(self, params: MethodParams):
        super().__init__(params)
        self.field = "method"

    def distill_loss(self, out: StepOutputs) -> Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def forward(self, out: StepOutputs) -> Tensor:
        # Full precision under mixed-precision training: Gram matrices, kernels and squared
        # differences of normalised features lose too much in half precision.
        with torch.autocast(out.student_logits.device.type, enabled=False):
            loss = self.distill_loss(out)
        weight = float(getattr(self.hparams, "ce_weight", 0.0))
        if weight:
            loss = loss + weight * masked_cross_entropy(out.student_logits, out.targets)
        return loss


class LayerTerm(DistillTerm):
    """A term over (student layer, teacher layer) pairs named by its `LayerParams`: the layers
    to hook, their check after the dry forward, and the sum of a loss over the pairs."""

    hparams: LayerParams

    def student_layers(self) -> list[str]:
        return list(self.hparams.student_layers)

    def teacher_layers(self) -> list[str]:
        return list(self.hparams.teacher_layers)

    def setup(
        self, student_features: dict[str, Tensor], teacher_features: dict[str, Tensor]
    ) -> None:
        self.paired_features(student_features, teacher_features)

    def paired_features(
        self, student_features: dict[str, Tensor], teacher_features: dict[str, Tensor]
    ) -> tuple[list[Tensor], list[Tensor]]:
        """The dry-forward outputs of the named layers, in spec order (user error if absent)."""
        p = self.hparams
        return (
            require_features(student_features, p.student_layers, f"{self.field}.student_layers"),
            require_features(teacher_features, p.teacher_layers, f"{self.field}.teacher_layers"),
        )

    def pair_sum(self, out: StepOutputs, loss: Callable[[Tensor, Tensor], Tensor]) -> Tensor:
        """Σ loss(student feature, detached teacher feature) over the layer pairs."""
        total: Tensor | None = None
        for s, t in layer_pairs(out, self.hparams):
            value = loss(s, t)
            total = value if total is None else total + value
        assert total is not None, "LayerParams requires at least one layer pair"
        return total


def as_float(t: Tensor) -> Tensor:
    """float32 for half-precision (autocast) outputs; float64 stays, for exact reference tests."""
    return t if t.dtype == torch.float64 else t.float()


def layer_pairs(out: StepOutputs, params: LayerParams) -> list[tuple[Tensor, Tensor]]:
    """(student, detached teacher) feature pairs in the order the spec names them."""
    return [
        (out.student_features[s], out.teacher_features[t].detach())
        for s, t in zip(params.student_layers, params.teacher_layers, strict=True)
    ]


def require_features(features: dict[str, Tensor], names: Sequence[str], field: str) -> list[Tensor]:
    """The dry-forward outputs of `names`; a module that never runs in forward is a user error."""
    missing = [n for n in names if n not in features]
    if missing:
        raise InputError(
            field,
            f"module {', '.join(repr(m) for m in missing)} produced no tensor in a forward pass; "
            "name a module that runs in the model's forward (see the zoo's module names)",
        )
    return [features[n] for n in names]


def require_4d(shapes: Sequence[tuple[str, torch.Size]], field: str, method: str) -> None:
    for name, shape in shapes:
        if len(shape) != 4:
            raise InputError(
                field,
                f"{method} needs convolutional feature maps (B, C, H, W); layer {name!r} outputs "
                f"{tuple(shape)}; pick a conv block (e.g. resnet layer1..3, convnet block1..)",
            )


def pool_to_common(s: Tensor, t: Tensor) -> tuple[Tensor, Tensor]:
    """Adaptive-average-pool the spatially larger of two (B, C, H, W) maps to the smaller size."""
    if s.shape[2:] == t.shape[2:]:
        return s, t
    size = (min(s.shape[2], t.shape[2]), min(s.shape[3], t.shape[3]))
    if tuple(s.shape[2:]) != size:
        s = F.adaptive_avg_pool2d(s, size)
    if tuple(t.shape[2:]) != size:
        t = F.adaptive_avg_pool2d(t, size)
    return s, t
