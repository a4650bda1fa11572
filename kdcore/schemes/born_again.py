"""Born-again networks (Furlanello et al. 2018, "Born Again Neural Networks", ICML): a chain of
generations of the student's own architecture.

Generation 1 is the ordinary distillation stage (`distill`: the student learns from the teacher,
or from the last teacher assistant). Generation k+1 (stage `generation<k+1>`) is a fresh student,
built and initialised exactly like generation 1, distilled with the spec's `method` and `train`
settings from generation k, frozen in eval mode. The last generation is the job's student (the
one exported); every generation's accuracy is reported. Each stage's checkpoint carries the
fingerprint of the student's distillation stage: generation k depends on exactly the sections
generation 1 does, and the stage name tells the generations apart (so raising `generations` on a
finished job trains only the new ones).
"""

from __future__ import annotations

from functools import partial
from typing import ClassVar

from kdcore.build import build_student
from kdcore.errors import InputError
from kdcore.features import check_layers
from kdcore.schemes.base import Generation, JobState, Scheme, Stage, register
from kdcore.spec import JobSpec
from kdcore.train import Teaching, fit, freeze


@register("born_again")
class BornAgain(Scheme):
    name: ClassVar[str] = "born_again"
    order: ClassVar[int] = 50

    def applies(self, spec: JobSpec) -> bool:
        return spec.generations > 1

    def plan(self, spec: JobSpec) -> list[Stage]:
        return [
            Stage(
                f"generation{number}",
                spec.train.epochs,
                partial(self.train_generation, number=number),
                timing="generations",
            )
            for number in range(2, spec.generations + 1)
        ]

    def check(self, job: JobState) -> None:
        """A generation teaches the next, so a feature method's teacher layers must exist on the
        student's architecture too."""
        student = build_student(job.spec, job.data)
        try:
            check_layers(
                student, job.method.teacher_layers(), "method.teacher_layers", job.data.x_train[:2]
            )
        except InputError as exc:
            raise InputError(
                "generations",
                f"each generation teaches the next, so the student needs the layers "
                f"method.teacher_layers names: {exc.message}",
            ) from None

    def train_generation(self, job: JobState, number: int) -> None:
        """Generation `number`, distilled from the one before (the distill stage's fingerprint:
        a generation depends on exactly what generation 1 does)."""
        spec = job.spec
        model = build_student(spec, job.data)
        ctx = job.stage(
            f"generation{number}",
            job.student_fingerprint(),
            teaching=Teaching(freeze(job.student), "eval", cache=True),
        )
        result = fit(model, job.fresh_method(), ctx)
        job.generations.append(Generation(number, model, result))
