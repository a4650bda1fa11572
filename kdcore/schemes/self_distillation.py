"""Self-distillation and teacher-free methods (`byot`, `tf_kd`, `ce`): the student teaches
itself (its deeper parts, or a hand-made soft target); no teacher is consulted while it trains.
A spec still names a teacher: the report's gap and the gates are measured to it."""

from __future__ import annotations

from typing import ClassVar

from kdcore.schemes.base import JobState, register
from kdcore.schemes.offline import Offline
from kdcore.train import NO_TEACHER, Teaching


@register("self")
class SelfDistillation(Offline):
    name: ClassVar[str] = "self"

    def teaching(self, job: JobState) -> Teaching:
        return NO_TEACHER
