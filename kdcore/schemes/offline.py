"""Offline distillation: a frozen teacher (one, several, or the last teacher assistant: whoever
the earlier stages left) teaches the student in the `distill` stage. The default scheme of every
method that learns from a teacher."""

from __future__ import annotations

from typing import ClassVar

from torch import nn

from kdcore.build import build_student
from kdcore.schemes.base import JobState, StudentScheme, register


@register("offline")
class Offline(StudentScheme):
    name: ClassVar[str] = "offline"

    def build_trainee(self, job: JobState) -> nn.Module:
        return build_student(job.spec, job.data)
