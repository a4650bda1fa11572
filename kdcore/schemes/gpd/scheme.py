"""How a GPD job (`method: gpd`) fits the pipeline: spec checks, the trainee, the report.

gpd.md §5's scenarios: `teacher` (a pre-trained static teacher teaches the student and the DT),
`scratch` (no teacher: the DT is the student's only teacher) and `finetune` (no teacher, the
student starts from `student.checkpoint`, a file or an earlier job's safetensors).
"""

from __future__ import annotations

from typing import Any

from kdcore.data.dataset import Dataset
from kdcore.errors import InputError
from kdcore.methods.base import Method
from kdcore.methods.gpd import GapPreserving, GPDParams
from kdcore.schemes.gpd.trainee import GPDTrainee
from kdcore.spec import JobSpec


def is_gpd(method: Method) -> bool:
    return isinstance(method, GapPreserving)


def check_spec(spec: JobSpec, method: Method) -> None:
    """What a GPD job cannot combine with (the spec's teacher rules are checked at parse time)."""
    if not is_gpd(method):
        return
    p = method.hparams
    assert isinstance(p, GPDParams)
    if spec.assistants:
        raise InputError("assistants", "method gpd builds its own dynamic teacher; remove them")
    if spec.generations > 1:
        raise InputError("generations", "method gpd trains one student; use 1")
    if spec.student.output is not None:
        raise InputError(
            "student.output", "method gpd needs a student whose forward returns the logits"
        )
    if p.scenario == "finetune" and not spec.student.checkpoint:
        raise InputError(
            "student.checkpoint",
            "scenario finetune starts from a trained student: give its weights "
            "(a state dict or safetensors file, e.g. an earlier job's student.safetensors)",
        )


def build_trainee(spec: JobSpec, data: Dataset, method: Method) -> GPDTrainee:
    """The student (built as for any job, checkpoint loaded) inside its dynamic teacher; a
    layer the expansion cannot handle is an error on `student.arch` before any training."""
    from kdcore.pipeline import build_student  # the pipeline imports this module

    p = method.hparams
    assert isinstance(p, GPDParams)
    student = build_student(spec, data)
    branches = None
    if p.cbr:
        branches = "finetune" if spec.student.checkpoint else "fresh"
    try:
        return GPDTrainee(student, p.ratio, p.noise, spec.train.seed, branches)
    except ValueError as exc:
        raise InputError("student.arch", f"{spec.student.arch}: {exc}") from None


def gaps(teacher: float | None, dynamic: float | None, student: float) -> dict[str, float | None]:
    """Accuracy points between each pair of static teacher, dynamic teacher and student."""

    def diff(a: float | None, b: float | None) -> float | None:
        return None if a is None or b is None else round(a - b, 4)

    return {
        "teacher_student": diff(teacher, student),
        "teacher_dynamic": diff(teacher, dynamic),
        "dynamic_student": diff(dynamic, student),
    }


def report_section(method: Method, summary: dict[str, Any]) -> dict[str, Any]:
    p = method.hparams
    assert isinstance(p, GPDParams)
    return {"ratio": p.ratio, "scenario": p.scenario, "cbr": p.cbr, **summary}
