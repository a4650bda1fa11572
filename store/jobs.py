"""Job state changes, each one a conditional UPDATE plus an event row.

The database is the source of truth and Celery delivers at least once, so every change a worker
makes is fenced: it applies only while the job is still in the state and attempt that worker
claimed. A second delivery of the same message, or a worker that lost its lease, changes nothing.

    queued → running → succeeded | failed | cancelled
    running → cancelling → cancelled          (cancel requested while running)
    running/cancelling → queued | cancelled   (lease expired: the worker was lost)
    failed | cancelled → queued               (retry: a new attempt)
"""

from __future__ import annotations

import base64
import json
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import ColumnElement, and_, case, or_, select, update
from sqlalchemy.orm import Session

from kdcore.spec import JobSpec
from store.models import (
    TERMINAL,
    Artifact,
    Evaluation,
    Job,
    JobEvent,
    JobStatus,
    Metric,
    utcnow,
)
from store.webhooks import queue_notification

ACTIVE = (JobStatus.running, JobStatus.cancelling)


class IllegalTransition(Exception):
    """The job is in a state that does not allow the change (the API answers 409)."""

    def __init__(self, job: Job, action: str):
        self.status = job.status
        super().__init__(f"cannot {action} a job that is {job.status}")


def add_event(
    s: Session,
    job_id: str,
    kind: str,
    message: str = "",
    status: str | None = None,
    data: dict[str, Any] | None = None,
) -> None:
    s.add(JobEvent(job_id=job_id, kind=kind, message=message, status=status, data=data))


def create_job(s: Session, spec: JobSpec, owner: str | None = None) -> Job:
    job = Job(
        name=spec.name, owner=owner, spec=spec.model_dump(mode="json"), status=JobStatus.queued
    )
    s.add(job)
    s.flush()
    add_event(s, job.id, "status", "job queued", status=JobStatus.queued)
    return job


def get_job(s: Session, job_id: str, owner: str | None = None) -> Job | None:
    job = s.get(Job, job_id)
    if job is None or (owner is not None and job.owner != owner):
        return None
    return job


def mark_enqueued(s: Session, job_id: str) -> None:
    s.execute(update(Job).where(Job.id == job_id).values(enqueued_at=utcnow()))


# --- listing ----------------------------------------------------------------------------------


def encode_cursor(job: Job) -> str:
    raw = json.dumps([job.created_at.isoformat(), job.id]).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(cursor: str) -> tuple[datetime, str]:
    """Raise ValueError for a cursor this service did not hand out."""
    try:
        padded = cursor + "=" * (-len(cursor) % 4)
        created, job_id = json.loads(base64.urlsafe_b64decode(padded))
        when = datetime.fromisoformat(created)
        if when.tzinfo is None:  # ours always carry one; a naive one fails in the query
            raise ValueError("no time zone")
        return when, str(job_id)
    except Exception as exc:
        raise ValueError("not a cursor from this API; pass next_cursor as given") from exc


def list_jobs(
    s: Session,
    *,
    status: str | None = None,
    name: str | None = None,
    owner: str | None = None,
    limit: int = 50,
    cursor: str | None = None,
) -> tuple[list[Job], str | None]:
    """Newest first, keyset-paginated on (created_at, id)."""
    q = select(Job)
    if status:
        q = q.where(Job.status == status)
    if name:
        q = q.where(Job.name == name)
    if owner is not None:
        q = q.where(Job.owner == owner)
    if cursor:
        created, job_id = decode_cursor(cursor)
        q = q.where(or_(Job.created_at < created, and_(Job.created_at == created, Job.id < job_id)))
    jobs = list(s.scalars(q.order_by(Job.created_at.desc(), Job.id.desc()).limit(limit + 1)))
    next_cursor = encode_cursor(jobs[limit - 1]) if len(jobs) > limit else None
    return jobs[:limit], next_cursor


# --- user actions -----------------------------------------------------------------------------


def request_cancel(s: Session, job: Job) -> Job:
    """A queued job is cancelled at once, a running one is asked to stop; a finished job is
    returned unchanged."""
    if job.status == JobStatus.queued:
        _set(s, job, JobStatus.cancelled, "cancelled before it started", finished_at=utcnow())
    elif job.status == JobStatus.running:
        _set(s, job, JobStatus.cancelling, "cancel requested; stopping at the next batch")
    return job


def retry(s: Session, job: Job) -> Job:
    if job.status not in (JobStatus.failed, JobStatus.cancelled):
        raise IllegalTransition(job, "retry")
    _set(
        s,
        job,
        JobStatus.queued,
        "retry requested",
        error_code=None,
        error_message=None,
        finished_at=None,
        progress=0.0,
        attempt_floor=job.attempts,
    )
    return job


def _set(s: Session, job: Job, status: JobStatus, message: str, **values: Any) -> None:
    job.status = status
    for key, value in values.items():
        setattr(job, key, value)
    add_event(s, job.id, "status", message, status=status)
    if status in TERMINAL:
        queue_notification(s, job)
    s.flush()


# --- the worker's side ------------------------------------------------------------------------


@dataclass(frozen=True)
class Claim:
    """What a worker holds after claiming a job: every later write is fenced on `attempt`."""

    job_id: str
    attempt: int
    worker: str
    since_retry: int = 1  # attempts since the job was queued by its user (1 on the first run)


def _claimable(now: datetime) -> ColumnElement[bool]:
    """queued, or running with a lease expired at `now` (its worker was lost)."""
    return or_(
        Job.status == JobStatus.queued,
        and_(Job.status == JobStatus.running, Job.lease_expires_at < now),
    )


def claimable(s: Session, job_id: str) -> bool:
    """Whether `claim` would hand the job out now: a plain read (no lock, nothing changes), so a
    worker can drop a message of a finished or cancelled job before it spends a process on it."""
    found = s.scalar(select(Job.id).where(Job.id == job_id, _claimable(utcnow())))
    return found is not None


def claim(s: Session, job_id: str, worker: str, lease_s: float) -> Claim | None:
    """queued (or running with an expired lease) → running, attempt + 1; None if not claimable."""
    now = utcnow()
    lease = now + timedelta(seconds=lease_s)
    result = s.execute(
        update(Job)
        .where(Job.id == job_id, _claimable(now))
        .values(
            status=JobStatus.running,
            attempts=Job.attempts + 1,
            worker=worker,
            heartbeat_at=now,
            lease_expires_at=lease,
            started_at=now,
            updated_at=now,
        )
        .returning(Job.attempts, Job.attempt_floor)
    )
    row = result.one_or_none()
    if row is None:
        return None
    attempt, floor = row
    add_event(
        s,
        job_id,
        "status",
        f"running on {worker} (attempt {attempt})",
        status=JobStatus.running,
        data={"attempt": attempt, "worker": worker},
    )
    return Claim(job_id, attempt, worker, since_retry=attempt - floor)


def _fenced(c: Claim) -> Any:
    return and_(Job.id == c.job_id, Job.attempts == c.attempt, Job.status.in_(ACTIVE))


def heartbeat(s: Session, c: Claim, lease_s: float) -> str | None:
    """Renew the lease; return the job's status (so the worker sees `cancelling`), or None
    when the claim is lost (another attempt took over, or the job ended)."""
    now = utcnow()
    result = s.execute(
        update(Job)
        .where(_fenced(c))
        .values(heartbeat_at=now, lease_expires_at=now + timedelta(seconds=lease_s))
        .returning(Job.status)
    )
    return result.scalar_one_or_none()


def report_progress(s: Session, c: Claim, progress: float, stage: str, epoch: int | None) -> None:
    """Progress never goes back: an attempt that resumes after a lost worker replays its finished
    stages from checkpoints, and a reader must not see the bar jump backwards (a user's retry
    resets it to 0 explicitly)."""
    s.execute(
        update(Job)
        .where(_fenced(c))
        .values(
            progress=case((Job.progress > progress, Job.progress), else_=progress),
            stage=stage,
            current_epoch=epoch,
            updated_at=utcnow(),
        )
    )


def record_metrics(s: Session, c: Claim, stage: str, epoch: int, values: dict[str, float]) -> None:
    """Per-epoch values; an epoch replayed after a resume overwrites, never duplicates."""
    existing = {
        m.name: m
        for m in s.scalars(
            select(Metric).where(
                Metric.job_id == c.job_id, Metric.stage == stage, Metric.epoch == epoch
            )
        )
    }
    for name, value in values.items():
        if name in existing:
            existing[name].value = value
        else:
            s.add(Metric(job_id=c.job_id, stage=stage, epoch=epoch, name=name, value=value))


def finish(
    s: Session,
    c: Claim,
    status: JobStatus,
    message: str,
    *,
    error_code: str | None = None,
    artifacts: list[Artifact] | None = None,
    evaluation: Evaluation | None = None,
) -> bool:
    """End the claimed attempt; False (and nothing written) if the claim was lost."""
    assert status in TERMINAL
    now = utcnow()
    values: dict[str, Any] = {
        "status": status,
        "finished_at": now,
        "updated_at": now,
        "lease_expires_at": None,
    }
    if status == JobStatus.succeeded:
        values.update(progress=1.0, error_code=None, error_message=None)
    elif status == JobStatus.failed:
        values.update(error_code=error_code, error_message=message)
    result = s.execute(update(Job).where(_fenced(c)).values(**values).returning(Job.id))
    if result.scalar_one_or_none() is None:
        return False
    for artifact in artifacts or []:
        s.add(artifact)
    if evaluation is not None:
        s.add(evaluation)
    add_event(
        s,
        c.job_id,
        "status",
        message,
        status=status,
        data={"error_code": error_code} if error_code else None,
    )
    job = s.get(Job, c.job_id, populate_existing=True)
    if job is not None:
        queue_notification(s, job, evaluation=evaluation, artifacts=artifacts)
    return True


# --- the reconciler's side --------------------------------------------------------------------


def recover_lost(s: Session) -> list[str]:
    """Running jobs whose lease expired go back to queued (cancelling ones become cancelled);
    returns the ids to re-enqueue."""
    now = utcnow()
    lost = list(
        s.scalars(
            select(Job)
            .where(Job.status.in_(ACTIVE), Job.lease_expires_at < now)
            .with_for_update(skip_locked=True)
        )
    )
    requeue = []
    for job in lost:
        if job.status == JobStatus.cancelling:
            _set(s, job, JobStatus.cancelled, "worker lost while cancelling", finished_at=now)
        else:
            _set(
                s,
                job,
                JobStatus.queued,
                f"worker {job.worker} lost (no heartbeat since {job.heartbeat_at}); requeued",
            )
            requeue.append(job.id)
    return requeue


def stale_queued(s: Session, older_than: timedelta) -> list[str]:
    """Queued jobs enqueued (or created) longer ago than `older_than`: candidates whose broker
    message may be gone."""
    cutoff = utcnow() - older_than
    q = select(Job.id).where(
        Job.status == JobStatus.queued,
        or_(Job.enqueued_at < cutoff, and_(Job.enqueued_at.is_(None), Job.created_at < cutoff)),
    )
    return list(s.scalars(q))
