"""The scratch baseline (`evaluate.baseline`): the same student, same seed and epochs, trained
alone with cross-entropy: what distillation is compared to (stage `baseline`)."""

from __future__ import annotations

from typing import Any, ClassVar

from kdcore.build import build_student, fingerprint
from kdcore.methods import registry as methods
from kdcore.schemes.base import JobState, Scheme, Stage, register
from kdcore.spec import JobSpec
from kdcore.train import NO_TEACHER, fit


@register("baseline")
class Baseline(Scheme):
    name: ClassVar[str] = "baseline"
    order: ClassVar[int] = 20

    def applies(self, spec: JobSpec) -> bool:
        return spec.evaluate.baseline

    def plan(self, spec: JobSpec) -> list[Stage]:
        return [Stage("baseline", spec.train.epochs, self.train)]

    def train(self, job: JobState) -> None:
        spec = job.spec
        ctx = job.stage(
            "baseline",
            fingerprint(spec.student, spec.data, spec.train),
            teaching=NO_TEACHER,
        )
        job.scratch[self.name] = fit(build_student(spec, job.data), methods.build("ce"), ctx)

    def report(self, job: JobState) -> dict[str, Any]:
        result = job.scratch[self.name]
        return {
            "baseline": {
                "accuracy": round(result.history[-1].student_accuracy, 4),
                "best_accuracy": round(result.best_accuracy, 4),
                "history": result.history,
            }
        }
