"""Response models: what the API promises to clients (and what the OpenAPI document shows).

They are built from the store's ORM rows with `from_attributes`, so a column added to the store
stays private until it is added here on purpose.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, RootModel

from kdcore.report import Evaluation, Report
from kdcore.spec import UPLOAD_PREFIX
from store.models import Artifact, Job, JobStatus, Upload
from store.models import Evaluation as EvaluationRow


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


class ArtifactNotFoundOut(RootModel[FormatNotFoundOut | ErrorOut]):
    """404 of a download: no such format (with the formats there are), or no such job, or its
    file missing from the blob store (`code` blob_missing)."""


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


class EvaluationOut(Evaluation):
    """Teacher, student (and for GPD jobs the dynamic teacher) measured on one held-out split:
    `kdcore.report.Evaluation`, the summary of the job's report, as `distill run`'s report.json
    and the SDK show it.

    A GPD job without a static teacher (`method.scenario` scratch or finetune) has null
    `teacher_*` fields and a null `compression_ratio`; its `gap` is measured to the dynamic
    teacher (`gap_reference` = dynamic_teacher)."""

    created_at: datetime

    @classmethod
    def of(cls, row: EvaluationRow) -> EvaluationOut:
        return cls(**row.summary().model_dump(), created_at=row.created_at)


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
            evaluation=EvaluationOut.of(job.evaluation) if job.evaluation else None,
            artifacts=[ArtifactOut.of(a) for a in job.artifacts],
        )


class JobPage(BaseModel):
    items: list[JobSummary]
    next_cursor: str | None = Field(
        None,
        description="an opaque token: pass it as `cursor` for the next page; null on the last page",
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
    report: Report = Field(
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
