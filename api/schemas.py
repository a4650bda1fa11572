"""Response models: what the API promises to clients (and what the OpenAPI document shows).

They are built from the store's ORM rows with `from_attributes`, so a column added to the store
stays private until it is added here on purpose.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from kdcore.spec import UPLOAD_PREFIX
from store.models import Artifact, Job, JobStatus, Upload


class Out(BaseModel):
    model_config = ConfigDict(from_attributes=True)


# --- errors -----------------------------------------------------------------------------------


class FieldError(BaseModel):
    loc: str = Field(..., description="dotted path of the offending field, e.g. `method.name`")
    msg: str = Field(..., description="what is wrong and how to fix it")


class ValidationErrorOut(BaseModel):
    """422: the request named a bad field; `detail` lists every problem found."""

    detail: list[FieldError]
    message: str = Field(..., description="the same problems as `loc: msg` lines")
    code: str = "invalid_request"


class ErrorOut(BaseModel):
    """Any other 4xx/5xx: a sentence saying what happened and what to do."""

    detail: str
    code: str


class ConflictOut(ErrorOut):
    """409: the job's current state does not allow the action."""

    status: JobStatus = Field(..., description="the job's state when the action was refused")


class FormatNotFoundOut(ErrorOut):
    """404 for an artifact format the job did not produce."""

    available: list[str] = Field(..., description="the formats this job has")


# --- jobs -------------------------------------------------------------------------------------


class ArtifactOut(Out):
    format: str = Field(..., description="torchscript, torch_export, onnx, safetensors, ...")
    filename: str
    sha256: str
    size_bytes: int
    max_abs_diff: float = Field(
        ..., description="largest output difference between the reloaded file and the student"
    )
    created_at: datetime
    download_url: str = Field(..., description="GET this path to download the file")

    @classmethod
    def of(cls, artifact: Artifact) -> ArtifactOut:
        return cls.model_validate(
            {
                **{k: getattr(artifact, k) for k in cls.model_fields if k != "download_url"},
                "download_url": f"/v1/jobs/{artifact.job_id}/artifacts/{artifact.format}",
            }
        )


class EvaluationOut(Out):
    """Teacher, student (and for GPD jobs the dynamic teacher) measured on one held-out split.

    A GPD job without a static teacher (`method.scenario` scratch or finetune) has null
    `teacher_*` fields and a null `compression_ratio`; its `gap` is measured to the dynamic
    teacher (`gap_reference` = dynamic_teacher)."""

    teacher_accuracy: float | None = Field(
        None, description="percent, on the held-out split; null when the job had no teacher"
    )
    student_accuracy: float = Field(..., description="percent, on the same split")
    baseline_accuracy: float | None = Field(
        None, description="the student trained alone with CE (when evaluate.baseline is on)"
    )
    gap: float = Field(
        ...,
        description="teacher minus student accuracy in points, or dynamic teacher minus student "
        "when gap_reference is dynamic_teacher; the quality gates judge this",
    )
    gap_reference: Literal["teacher", "dynamic_teacher"] = Field(
        "teacher",
        description="which teacher `gap` is measured to: the static teacher, or (a GPD job "
        "without one) the dynamic teacher",
    )
    teacher_params: int | None = Field(None, description="null when the job had no teacher")
    student_params: int
    compression_ratio: float | None = Field(
        None, description="teacher parameters / student parameters; null without a teacher"
    )
    teacher_latency_ms: float | None = Field(
        None, description="CPU latency per batch; null when the job had no teacher"
    )
    student_latency_ms: float
    student_size_bytes: int
    dynamic_teacher_accuracy: float | None = Field(
        None,
        description="GPD only: accuracy (percent) of the dynamic teacher, the student widened "
        "by `dynamic_teacher_ratio` and trained alongside it; null for other methods",
    )
    dynamic_teacher_params: int | None = Field(
        None, description="GPD only: parameters of the dynamic teacher"
    )
    dynamic_teacher_ratio: int | None = Field(
        None, description="GPD only: how many times wider than the student the dynamic teacher is"
    )
    gap_teacher_dynamic: float | None = Field(
        None,
        description="GPD only: static teacher minus dynamic teacher accuracy, in points; null "
        "without a static teacher",
    )
    gap_dynamic_student: float | None = Field(
        None, description="GPD only: dynamic teacher minus student accuracy, in points"
    )
    gate_passed: bool
    gates: dict[str, Any]
    created_at: datetime


class JobSummary(Out):
    """A job without its spec, evaluation and artifacts (list items, stream events)."""

    id: str
    name: str
    owner: str | None
    status: JobStatus
    progress: float = Field(..., description="0..1 over all stages")
    stage: str | None = Field(None, description="the stage running now (teacher, distill, ...)")
    current_epoch: int | None
    attempts: int = Field(..., description="times a worker has started this job")
    created_at: datetime
    updated_at: datetime
    enqueued_at: datetime | None = Field(
        None, description="last time the job id was handed to the broker"
    )
    started_at: datetime | None
    finished_at: datetime | None
    error_code: str | None
    error_message: str | None


class JobDetail(JobSummary):
    spec: dict[str, Any] = Field(..., description="the validated spec, defaults filled in")
    evaluation: EvaluationOut | None
    artifacts: list[ArtifactOut]

    @classmethod
    def of(cls, job: Job) -> JobDetail:
        summary = JobSummary.model_validate(job).model_dump()
        return cls(
            **summary,
            spec=job.spec,
            evaluation=EvaluationOut.model_validate(job.evaluation) if job.evaluation else None,
            artifacts=[ArtifactOut.of(a) for a in job.artifacts],
        )


class JobPage(BaseModel):
    items: list[JobSummary]
    next_cursor: str | None = Field(
        None, description="pass as `cursor` for the next page; null on the last page"
    )


class EventOut(Out):
    id: int = Field(..., description="increasing; pass the last one seen as `after`")
    at: datetime
    kind: str = Field(..., description="status (a state change), message, broker, ...")
    status: str | None = Field(None, description="the state entered, for status events")
    message: str
    data: dict[str, Any] | None


class EventList(BaseModel):
    items: list[EventOut]


class MetricSeries(BaseModel):
    series: dict[str, dict[str, list[tuple[int, float]]]] = Field(
        ...,
        description="stage → metric name → [[epoch, value], ...] in epoch order",
        examples=[{"distill": {"train_loss": [[1, 0.91], [2, 0.55]]}}],
    )


class ReportOut(BaseModel):
    report: dict[str, Any] = Field(
        ..., description="the full evaluation report (accuracies, history, timings, gates)"
    )


# --- uploads ----------------------------------------------------------------------------------


class UploadOut(Out):
    id: str
    kind: Literal["model", "dataset"]
    filename: str
    sha256: str
    size_bytes: int
    created_at: datetime
    ref: str = Field(..., description="put this string in a spec's file field: upload:<id>")

    @classmethod
    def of(cls, upload: Upload) -> UploadOut:
        return cls.model_validate(
            {
                **{k: getattr(upload, k) for k in cls.model_fields if k != "ref"},
                "ref": f"{UPLOAD_PREFIX}{upload.id}",
            }
        )


class UploadList(BaseModel):
    items: list[UploadOut]


# --- health -----------------------------------------------------------------------------------


class Health(BaseModel):
    status: Literal["ok"] = "ok"


class Readiness(BaseModel):
    status: Literal["ready", "not ready"]
    checks: dict[str, str] = Field(..., description="database and broker: ok, or the error")
    detail: str | None = Field(None, description="which part is down, when one is")
