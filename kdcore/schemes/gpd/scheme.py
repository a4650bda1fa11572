"""How a GPD job (`method: gpd`) trains: spec checks, the trainee, the student cut out of it,
the dynamic teacher in the report.

gpd.md §5's scenarios: `teacher` (a pre-trained static teacher teaches the student and the DT),
`scratch` (no teacher: the DT is the student's only teacher) and `finetune` (no teacher, the
student starts from `student.checkpoint`, a file or an earlier job's safetensors).
"""

from __future__ import annotations

from typing import Any, ClassVar

from torch import nn

from kdcore.build import build_student
from kdcore.errors import InputError
from kdcore.methods.gpd import GPDParams
from kdcore.schemes.base import FieldErrors, JobState, StudentScheme, register
from kdcore.schemes.gpd.cbr import Init
from kdcore.schemes.gpd.trainee import GPDTrainee
from kdcore.spec import JobSpec, TrainSpec


def params(spec: JobSpec) -> GPDParams:
    p = spec.method.params()
    assert isinstance(p, GPDParams)
    return p


@register("gpd")
class GapPreservingScheme(StudentScheme):
    name: ClassVar[str] = "gpd"

    def validate(self, spec: JobSpec) -> FieldErrors:
        """What a GPD job cannot combine with (who teaches is checked by parse_spec)."""
        errors: FieldErrors = []
        if spec.assistants:
            errors.append(("assistants", "method gpd builds its own dynamic teacher; remove them"))
        if spec.generations > 1:
            errors.append(("generations", "method gpd trains one student; use 1"))
        if spec.student.output is not None:
            errors.append(
                ("student.output", "method gpd needs a student whose forward returns the logits")
            )
        if params(spec).scenario == "finetune" and not spec.student.checkpoint:
            errors.append(
                (
                    "student.checkpoint",
                    "scenario finetune starts from a trained student: give its weights "
                    "(a state dict or safetensors file, e.g. an earlier job's "
                    "student.safetensors)",
                )
            )
        return errors

    def build_trainee(self, job: JobState) -> GPDTrainee:
        """The student (built as for any job, checkpoint loaded) inside its dynamic teacher; a
        layer the expansion cannot handle is an error on `student.arch` before any training."""
        spec, p = job.spec, params(job.spec)
        student = build_student(spec, job.data)
        branches: Init | None = None
        if p.cbr:
            branches = "finetune" if spec.student.checkpoint else "fresh"
        try:
            return GPDTrainee(student, p.ratio, p.noise, spec.train.seed, branches)
        except ValueError as exc:
            raise InputError("student.arch", f"{spec.student.arch}: {exc}") from None

    def trainee_scale(self, spec: JobSpec) -> int:
        """The student and its dynamic teacher, `ratio` times wider (≈ ratio² the size)."""
        return 1 + params(spec).ratio ** 2

    def train_settings(self, job: JobState) -> TrainSpec:
        """`train`, with GPD's gradient clip when the spec sets none (gpd.md §4)."""
        clip = params(job.spec).grad_clip
        if clip is None or job.spec.train.grad_clip is not None:
            return job.spec.train
        return job.spec.train.model_copy(update={"grad_clip": clip})

    def extract_student(self, job: JobState, trainee: nn.Module) -> nn.Module:
        """The student is cut out of its dynamic teacher, which the report measures too."""
        assert isinstance(trainee, GPDTrainee)
        student = trainee.student()
        job.scratch[self.name] = trainee.dynamic_teacher()
        return student

    def report(self, job: JobState) -> dict[str, Any]:
        p = params(job.spec)
        figures = job.figures(job.scratch[self.name])
        return {
            "dynamic_teacher": {"ratio": p.ratio, "scenario": p.scenario, "cbr": p.cbr, **figures}
        }
