"""The typed result of one job: what `distill run` writes as `report.json`, what the worker stores,
what `GET /v1/jobs/{id}` and the SDK show.

One model for every layer: the pipeline builds a `Report`; the store keeps its JSON (plus a few
indexed columns filled from `Report.evaluation` by one function); the API's evaluation and the
SDK's `Job.evaluation` are `Evaluation`, computed from the report, never re-declared. Adding a
figure means adding it here (and, only if the API must filter on it, one column and migration).

This module imports pydantic alone (no torch), so the client installs without the engine.
"""

from __future__ import annotations

import math
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, computed_field
from typing_extensions import TypedDict

from kdcore.callbacks import EpochRecord

GapReference = Literal["teacher", "dynamic_teacher"]


class Section(BaseModel):
    """Report parts ignore keys they do not know: a newer engine's report still reads."""

    model_config = ConfigDict(extra="ignore")


class ModelFigures(Section):
    """One model measured on the evaluation split."""

    accuracy: float = Field(..., description="percent")
    params: int
    size_bytes: int
    latency_ms: float = Field(..., description="CPU latency of one batch")


class TeacherMember(ModelFigures):
    """One of several teachers (`teachers:`)."""

    source: str
    arch: str | None = None
    weight: float = 1.0
    mode: str = "eval"
    history: list[EpochRecord] = Field(default_factory=list)


class TeacherReport(ModelFigures):
    """The static teacher; with several teachers, the best one's figures (the gap is measured to
    it), every teacher under `members` and the averaged ensemble's accuracy."""

    source: str = Field(..., description="checkpoint, torchscript, onnx, train, or teachers")
    arch: str | None = None
    history: list[EpochRecord] = Field(default_factory=list)
    best: int | None = None
    combine: str | None = None
    ensemble_accuracy: float | None = None
    members: list[TeacherMember] | None = None


class DynamicTeacherReport(ModelFigures):
    """GPD's dynamic teacher: the student widened `ratio` times and trained beside it."""

    ratio: int
    scenario: str
    cbr: bool


class StudentReport(ModelFigures):
    arch: str
    best_accuracy: float = Field(..., description="best per-epoch accuracy of its last stage")


class AssistantReport(ModelFigures):
    """One teacher assistant of the chain teacher → assistants → student."""

    arch: str
    kwargs: dict[str, Any] = Field(default_factory=dict)
    best_accuracy: float
    history: list[EpochRecord] = Field(default_factory=list)


class GenerationReport(Section):
    """One born-again generation (1 is the distill stage)."""

    generation: int
    accuracy: float
    best_accuracy: float
    history: list[EpochRecord] = Field(default_factory=list)


class BaselineReport(Section):
    """The student trained alone with cross-entropy, same seed and epochs."""

    accuracy: float
    best_accuracy: float
    history: list[EpochRecord] = Field(default_factory=list)


class PeersReport(Section):
    """Deep mutual learning: every peer's accuracy and the one exported."""

    count: int
    exported: int
    accuracies: list[float]


class Gaps(Section):
    """Accuracy points between each pair of static teacher, dynamic teacher and student."""

    teacher_student: float | None = None
    teacher_dynamic: float | None = None
    dynamic_student: float | None = None


class GateCheck(TypedDict):
    name: str
    threshold: float
    value: float
    passed: bool


class Gates(TypedDict):
    passed: bool
    checks: list[GateCheck]


class ArtifactReport(Section):
    """One exported file; `path` is where the engine wrote it (dropped once stored)."""

    format: str
    filename: str
    sha256: str
    size_bytes: int
    max_abs_diff: float = Field(..., description="reloaded file vs the student, check batches")
    path: str | None = None


class DataReport(Section):
    name: str
    input_shape: list[int]
    num_classes: int
    n_train: int
    n_labeled: int
    n_val: int


class Evaluation(Section):
    """The figures every layer shows about a finished job (accuracies in percent, on the
    evaluation split). A GPD job also measures its dynamic teacher (`dynamic_teacher_*`); one
    without a static teacher has `teacher_*` and `compression_ratio` None and its `gap` is to the
    dynamic teacher (`gap_reference`). Unknown keys (a newer server's) are ignored."""

    student_accuracy: float = Field(..., description="percent, on the evaluation split")
    gap: float = Field(
        ...,
        description="teacher minus student accuracy in points, or dynamic teacher minus student "
        "when gap_reference is dynamic_teacher; the quality gates judge this",
    )
    student_params: int
    student_latency_ms: float
    student_size_bytes: int
    gate_passed: bool
    gates: dict[str, Any] = Field(..., description="{passed, checks: [{name, threshold, ...}]}")
    teacher_accuracy: float | None = Field(
        None, description="percent, on the same split; null when the job had no static teacher"
    )
    teacher_params: int | None = None
    compression_ratio: float | None = Field(
        None, description="teacher parameters / student parameters; null without a teacher"
    )
    teacher_latency_ms: float | None = None
    baseline_accuracy: float | None = Field(
        None, description="the student trained alone with CE (when evaluate.baseline is on)"
    )
    gap_reference: GapReference = Field("teacher", description="which teacher `gap` is measured to")
    dynamic_teacher_accuracy: float | None = Field(
        None, description="GPD only: accuracy of the dynamic teacher"
    )
    dynamic_teacher_params: int | None = None
    dynamic_teacher_ratio: int | None = Field(
        None, description="GPD only: how many times wider than the student the DT is"
    )
    gap_teacher_dynamic: float | None = Field(
        None, description="GPD only: static teacher minus dynamic teacher, in points"
    )
    gap_dynamic_student: float | None = Field(
        None, description="GPD only: dynamic teacher minus student, in points"
    )

    @property
    def has_teacher(self) -> bool:
        return self.teacher_accuracy is not None

    def describe(self) -> str:
        """One line: the accuracies the job has, the gap (and what it is to), the compression."""
        parts = []
        if self.teacher_accuracy is not None:
            parts.append(f"teacher {self.teacher_accuracy:.2f}%")
        if self.dynamic_teacher_accuracy is not None:
            ratio = f" (x{self.dynamic_teacher_ratio})" if self.dynamic_teacher_ratio else ""
            parts.append(f"dynamic teacher {self.dynamic_teacher_accuracy:.2f}%{ratio}")
        parts.append(f"student {self.student_accuracy:.2f}%")
        against = " to the dynamic teacher" if self.gap_reference == "dynamic_teacher" else ""
        parts.append(f"gap {self.gap:.2f} points{against}")
        if self.compression_ratio is not None:
            parts.append(f"{self.compression_ratio:.1f}x fewer parameters")
        return "  ".join(parts)

    def summary(self) -> str:
        """`describe()` and the gates that failed: the final event of a job."""
        failed = [c for c in self.gates.get("checks", []) if not c["passed"]]
        if not failed:
            return self.describe()
        return f"{self.describe()}; quality gate failed: " + ", ".join(
            f"{c['name']} {c['value']} vs {c['threshold']}" for c in failed
        )


def gaps(teacher: float | None, dynamic: float | None, student: float) -> Gaps:
    """Accuracy points between each pair of static teacher, dynamic teacher and student."""

    def diff(a: float | None, b: float | None) -> float | None:
        return None if a is None or b is None else round(a - b, 4)

    return Gaps(
        teacher_student=diff(teacher, student),
        teacher_dynamic=diff(teacher, dynamic),
        dynamic_student=diff(dynamic, student),
    )


class Report(Section):
    """Everything one job measured and produced."""

    name: str
    method: dict[str, Any] = Field(..., description="name and every parameter, defaults filled")
    teacher: TeacherReport | None = None
    dynamic_teacher: DynamicTeacherReport | None = None
    student: StudentReport
    assistants: list[AssistantReport] = Field(default_factory=list)
    generations: list[GenerationReport] = Field(default_factory=list)
    baseline: BaselineReport | None = None
    peers: PeersReport | None = None
    gap: float
    gap_reference: GapReference = "teacher"
    gaps: Gaps = Field(default_factory=Gaps)
    compression: float | None = None
    gates: Gates
    artifacts: list[ArtifactReport] = Field(default_factory=list)
    history: list[EpochRecord] = Field(default_factory=list)
    data: DataReport
    sections: dict[str, Any] = Field(
        default_factory=dict, description="what schemes without a field of their own add"
    )
    teacher_cache: bool = False
    device: str = "cpu"
    timings: dict[str, float] = Field(default_factory=dict)
    versions: dict[str, str] = Field(default_factory=dict)
    spec: dict[str, Any] = Field(default_factory=dict)

    @computed_field  # type: ignore[prop-decorator]
    @property
    def evaluation(self) -> Evaluation:
        """The summary every layer shows, derived here and only here."""
        t, s, d = self.teacher, self.student, self.dynamic_teacher
        return Evaluation(
            student_accuracy=s.accuracy,
            gap=self.gap,
            student_params=s.params,
            student_latency_ms=s.latency_ms,
            student_size_bytes=s.size_bytes,
            gate_passed=bool(self.gates["passed"]),
            gates=dict(self.gates),
            teacher_accuracy=t.accuracy if t else None,
            teacher_params=t.params if t else None,
            compression_ratio=self.compression,
            teacher_latency_ms=t.latency_ms if t else None,
            baseline_accuracy=self.baseline.accuracy if self.baseline else None,
            gap_reference=self.gap_reference,
            dynamic_teacher_accuracy=d.accuracy if d else None,
            dynamic_teacher_params=d.params if d else None,
            dynamic_teacher_ratio=d.ratio if d else None,
            gap_teacher_dynamic=self.gaps.teacher_dynamic,
            gap_dynamic_student=self.gaps.dynamic_student,
        )

    def to_json(self) -> dict[str, Any]:
        """The JSON form (report.json, the store): finite numbers only (NaN/inf become null,
        which PostgreSQL's JSON requires)."""
        return _finite(self.model_dump(mode="json"))

    def stored(self, submitted_spec: dict[str, Any]) -> Report:
        """The report as the service keeps it: the spec as submitted (upload ids, not a worker's
        temporary paths) and artifacts by file name only."""
        return self.model_copy(
            update={
                "spec": submitted_spec,
                "artifacts": [a.model_copy(update={"path": None}) for a in self.artifacts],
            }
        )


def _finite(obj: Any) -> Any:
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_finite(v) for v in obj]
    return obj
