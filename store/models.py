"""SQLAlchemy models: the database is the source of truth for every job.

Tables: jobs, job_events (every state change and notable message), metrics (per epoch),
artifacts (exported students in the blob store), evaluations (accuracy gap and sizes), uploads
(user files in the blob store); projects and api_keys (who may call the API: a job's or an
upload's `owner` is its project's name; a project's `quotas` override the service's limits, a
key has a scope and may expire), idempotency_keys (one job per client-chosen key),
webhook_deliveries (an outbox of job-end notifications). Migrations in migrations/ must match
these models (tested).
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any, ClassVar

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Text,
    TypeDecorator,
    UniqueConstraint,
)
from sqlalchemy.engine import Dialect
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship

from kdcore.report import Evaluation as ReportEvaluation
from kdcore.report import Report


def utcnow() -> datetime:
    return datetime.now(UTC)


def new_id() -> str:
    return uuid.uuid4().hex


class UTCDateTime(TypeDecorator[datetime]):
    """Timezone-aware UTC on every backend (SQLite drops the zone; this puts it back)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is not None and value.tzinfo is None:
            raise ValueError("naive datetime; use store.models.utcnow()")
        return value.astimezone(UTC) if value is not None else None

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is not None and value.tzinfo is None:
            return value.replace(tzinfo=UTC)
        return value


class JobStatus(StrEnum):
    queued = "queued"
    running = "running"
    cancelling = "cancelling"
    succeeded = "succeeded"
    failed = "failed"
    cancelled = "cancelled"


TERMINAL = frozenset({JobStatus.succeeded, JobStatus.failed, JobStatus.cancelled})

NAMING = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING)
    type_annotation_map: ClassVar[dict[Any, Any]] = {
        datetime: UTCDateTime(),
        dict[str, Any]: JSON(),
    }


class Job(Base):
    __tablename__ = "jobs"
    __table_args__ = (Index("ix_jobs_status_created", "status", "created_at"),)

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    name: Mapped[str] = mapped_column(String(200), index=True)
    owner: Mapped[str | None] = mapped_column(String(200), index=True)
    spec: Mapped[dict[str, Any]]
    status: Mapped[str] = mapped_column(String(16), default=JobStatus.queued)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    # attempts already used when a user last retried the job: `max_attempts` limits the attempts
    # since then (workers lost in a row), not a job's whole history
    attempt_floor: Mapped[int] = mapped_column(Integer, default=0)
    progress: Mapped[float] = mapped_column(Float, default=0.0)
    stage: Mapped[str | None] = mapped_column(String(32))
    current_epoch: Mapped[int | None] = mapped_column(Integer)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)
    started_at: Mapped[datetime | None]
    finished_at: Mapped[datetime | None]
    enqueued_at: Mapped[datetime | None]
    error_code: Mapped[str | None] = mapped_column(String(64))
    error_message: Mapped[str | None] = mapped_column(Text)
    worker: Mapped[str | None] = mapped_column(String(200))
    heartbeat_at: Mapped[datetime | None]
    lease_expires_at: Mapped[datetime | None]

    events: Mapped[list[JobEvent]] = relationship(
        back_populates="job", order_by="JobEvent.id", cascade="all, delete-orphan"
    )
    artifacts: Mapped[list[Artifact]] = relationship(
        back_populates="job", order_by="Artifact.format", cascade="all, delete-orphan"
    )
    evaluation: Mapped[Evaluation | None] = relationship(
        back_populates="job", cascade="all, delete-orphan"
    )


class JobEvent(Base):
    __tablename__ = "job_events"

    id: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"), primary_key=True)
    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"), index=True)
    at: Mapped[datetime] = mapped_column(default=utcnow)
    kind: Mapped[str] = mapped_column(String(32))  # "status", "message", "webhook", ...
    status: Mapped[str | None] = mapped_column(String(16))  # the state entered, for "status"
    message: Mapped[str] = mapped_column(Text, default="")
    data: Mapped[dict[str, Any] | None]

    job: Mapped[Job] = relationship(back_populates="events")


class Metric(Base):
    __tablename__ = "metrics"
    __table_args__ = (UniqueConstraint("job_id", "stage", "epoch", "name"),)

    id: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"), primary_key=True)
    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"), index=True)
    stage: Mapped[str] = mapped_column(String(32))
    epoch: Mapped[int] = mapped_column(Integer)
    name: Mapped[str] = mapped_column(String(64))
    value: Mapped[float] = mapped_column(Float)
    at: Mapped[datetime] = mapped_column(default=utcnow)


class Artifact(Base):
    __tablename__ = "artifacts"
    __table_args__ = (UniqueConstraint("job_id", "format"),)

    id: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"), primary_key=True)
    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"), index=True)
    format: Mapped[str] = mapped_column(String(32))
    filename: Mapped[str] = mapped_column(String(200))
    # the blob's sha256; indexed: a blob is deleted only when no row names it any more
    storage_key: Mapped[str] = mapped_column(String(64), index=True)
    sha256: Mapped[str] = mapped_column(String(64))
    size_bytes: Mapped[int] = mapped_column(BigInteger)
    max_abs_diff: Mapped[float] = mapped_column(Float)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)

    job: Mapped[Job] = relationship(back_populates="artifacts")


class Evaluation(Base):
    """A finished job's report (`report`, the JSON of `kdcore.report.Report`) and, as indexed
    columns the API can filter and sort on, the figures of its summary (`Report.evaluation`):
    every column named like a field of `kdcore.report.Evaluation` is filled from it by `of`, so
    a new figure in the report needs no change here unless it must be filterable."""

    __tablename__ = "evaluations"

    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"), primary_key=True)
    teacher_accuracy: Mapped[float | None] = mapped_column(Float)
    student_accuracy: Mapped[float] = mapped_column(Float)
    baseline_accuracy: Mapped[float | None] = mapped_column(Float)
    gap: Mapped[float] = mapped_column(Float)
    teacher_params: Mapped[int | None] = mapped_column(BigInteger)
    student_params: Mapped[int] = mapped_column(BigInteger)
    compression_ratio: Mapped[float | None] = mapped_column(Float)
    teacher_latency_ms: Mapped[float | None] = mapped_column(Float)
    student_latency_ms: Mapped[float] = mapped_column(Float)
    student_size_bytes: Mapped[int] = mapped_column(BigInteger)
    dynamic_teacher_accuracy: Mapped[float | None] = mapped_column(Float)
    dynamic_teacher_params: Mapped[int | None] = mapped_column(BigInteger)
    dynamic_teacher_ratio: Mapped[int | None] = mapped_column(Integer)
    gap_reference: Mapped[str] = mapped_column(
        String(16), default="teacher", server_default="teacher"
    )  # "teacher" | "dynamic_teacher"
    gap_teacher_dynamic: Mapped[float | None] = mapped_column(Float)
    gap_dynamic_student: Mapped[float | None] = mapped_column(Float)
    gate_passed: Mapped[bool] = mapped_column(Boolean)
    gates: Mapped[dict[str, Any]]
    report: Mapped[dict[str, Any]]
    created_at: Mapped[datetime] = mapped_column(default=utcnow)

    job: Mapped[Job] = relationship(back_populates="evaluation")

    @classmethod
    def of(cls, job_id: str, report: Report) -> Evaluation:
        """The row of a finished job: the report's JSON and its summary's indexed columns."""
        summary = report.evaluation
        columns = set(cls.__table__.columns.keys()) & set(type(summary).model_fields)
        return cls(
            job_id=job_id,
            report=report.to_json(),
            **{name: getattr(summary, name) for name in columns},
        )

    def summary(self) -> ReportEvaluation:
        """The summary the API shows, from the stored report (the one source of its figures)."""
        return Report.model_validate(self.report).evaluation


class Upload(Base):
    __tablename__ = "uploads"
    __table_args__ = (UniqueConstraint("owner", "kind", "sha256"),)

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    owner: Mapped[str] = mapped_column(String(200), default="", index=True)  # "" = no auth
    kind: Mapped[str] = mapped_column(String(16))  # "model" | "dataset"
    filename: Mapped[str] = mapped_column(String(255))
    sha256: Mapped[str] = mapped_column(String(64), index=True)
    size_bytes: Mapped[int] = mapped_column(BigInteger)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class Project(Base):
    """A team sharing the service: its keys see only its own jobs and uploads."""

    __tablename__ = "projects"

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    name: Mapped[str] = mapped_column(String(200), unique=True)  # the `owner` of its rows
    # signs this project's webhooks (overrides DISTILLERY_WEBHOOK_SECRET); kept in clear because
    # signing needs it, unlike API keys, which are only ever compared
    webhook_secret: Mapped[str | None] = mapped_column(String(128))
    # overrides of the service's quota settings (store/quotas.py): {"max_queued_jobs": 20,
    # "max_storage_bytes": null, ...}; a name given with null means "no limit" for this project,
    # a name left out means the service's setting
    quotas: Mapped[dict[str, Any] | None]
    created_at: Mapped[datetime] = mapped_column(default=utcnow)

    keys: Mapped[list[ApiKey]] = relationship(
        back_populates="project", order_by="ApiKey.created_at", cascade="all, delete-orphan"
    )


class KeyScope(StrEnum):
    read = "read"  # GET and HEAD only: dashboards, CI readers
    write = "write"  # everything a project may do


class ApiKey(Base):
    """A bearer key of a project, stored as the sha256 of the key (the key is shown once)."""

    __tablename__ = "api_keys"

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    project_id: Mapped[str] = mapped_column(
        ForeignKey("projects.id", ondelete="CASCADE"), index=True
    )
    name: Mapped[str] = mapped_column(String(200), default="")
    prefix: Mapped[str] = mapped_column(String(16))  # the key's first characters, for listings
    key_hash: Mapped[str] = mapped_column(String(64), unique=True)
    scope: Mapped[str] = mapped_column(
        String(8), default=KeyScope.write, server_default=KeyScope.write.value
    )
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    expires_at: Mapped[datetime | None]  # None: never
    last_used_at: Mapped[datetime | None]  # written at most once a minute (store/auth.py)
    revoked_at: Mapped[datetime | None]

    project: Mapped[Project] = relationship(back_populates="keys")


class IdempotencyKey(Base):
    """`Idempotency-Key` of a job submission: unique per owner, so two racing requests with
    the same key cannot both create a job (the loser finds the winner's row)."""

    __tablename__ = "idempotency_keys"
    __table_args__ = (UniqueConstraint("owner", "key"),)

    id: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"), primary_key=True)
    owner: Mapped[str] = mapped_column(String(200))  # "" = no auth
    key: Mapped[str] = mapped_column(String(255))
    request_sha256: Mapped[str] = mapped_column(String(64))  # of the canonical spec
    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"), index=True)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class WebhookStatus(StrEnum):
    pending = "pending"
    delivered = "delivered"
    failed = "failed"  # gave up after the last attempt


class WebhookDelivery(Base):
    """One job-end notification to send: written in the transaction that ends the job (so it
    cannot be lost), sent after that commits, retried with backoff until it is delivered or its
    attempts run out. The body is fixed when the row is written, so every attempt is the same
    message (receivers deduplicate on the id)."""

    __tablename__ = "webhook_deliveries"
    __table_args__ = (Index("ix_webhook_deliveries_status_next", "status", "next_attempt_at"),)

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"), index=True)
    url: Mapped[str] = mapped_column(Text)
    event: Mapped[str] = mapped_column(String(32))  # job.succeeded | job.failed | job.cancelled
    payload: Mapped[dict[str, Any]]
    status: Mapped[str] = mapped_column(String(16), default=WebhookStatus.pending)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    next_attempt_at: Mapped[datetime] = mapped_column(default=utcnow)
    last_error: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    delivered_at: Mapped[datetime | None]
