"""Offline distillation's teacher (`teacher:`): one static teacher, loaded from its file or
trained inside the job first (stage `teacher`), frozen while the student learns from it."""

from __future__ import annotations

from typing import Any, ClassVar

from kdcore.schemes._teachers import resolve_teacher
from kdcore.schemes.base import JobState, Scheme, Stage, register
from kdcore.spec import JobSpec
from kdcore.train import Teaching


@register("teacher")
class SingleTeacher(Scheme):
    name: ClassVar[str] = "teacher"
    order: ClassVar[int] = 10

    def applies(self, spec: JobSpec) -> bool:
        return spec.teacher is not None

    def plan(self, spec: JobSpec) -> list[Stage]:
        assert spec.teacher is not None
        epochs = spec.teacher.train.epochs if spec.teacher.train is not None else 0
        return [Stage("teacher", epochs, self.resolve)]

    def resolve(self, job: JobState) -> None:
        t = job.spec.teacher
        assert t is not None
        resolved = resolve_teacher(
            job, t, job.method.teacher_layers(), field="teacher", stage="teacher"
        )
        job.teaching = Teaching(resolved.model, t.mode, cache=True)
        job.upstream = [t]
        job.scratch[self.name] = resolved

    def report(self, job: JobState) -> dict[str, Any]:
        t = job.spec.teacher
        assert t is not None
        r = job.scratch[self.name]
        section = {
            "source": t.source,
            "arch": t.arch,
            **job.figures(r.model, accuracy=r.accuracy),
            "history": r.history,
        }
        return {"teacher": section}
