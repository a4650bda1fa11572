"""Plain cross-entropy on the labels: the scratch baseline, and teacher training."""

from __future__ import annotations

from typing import ClassVar

from torch import Tensor

from kdcore.methods.base import Method, StepOutputs, masked_cross_entropy
from kdcore.methods.registry import register


@register("ce")
class CrossEntropy(Method):
    needs_teacher: ClassVar[bool] = False
    scheme: ClassVar[str] = "self"

    def forward(self, out: StepOutputs) -> Tensor:
        return masked_cross_entropy(out.student_logits, out.targets)
