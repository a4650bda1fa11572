"""Quotas per project: what a project may have at once, and how much it may run in a day.

| quota | counts | checked at |
|---|---|---|
| `max_running_jobs` | the project's jobs `running` or `cancelling` | submit, retry |
| `max_queued_jobs` | the project's jobs `queued` | submit, retry |
| `max_gpu_seconds_per_day` | running time of its attempts in the last 24 h | submit, retry |
| `max_storage_bytes` | sizes of its uploads and of its jobs' artifacts | submit, retry, upload |
| `rate_limit_per_minute` | API requests per key (api/ratelimit.py) | every request |

A job that is over no limit when it is submitted is never stopped by a quota later: quotas
refuse new work (429 with `Retry-After`), they do not cancel running work.

GPU-seconds are wall-clock seconds between a `running` status event of a job (a worker claimed
it) and the attempt's end (the next `queued`, `succeeded`, `failed` or `cancelled` event; a job
still running counts until now), summed over the project's attempts and cut to the last 24 h.
Each worker runs one job on one GPU, so a second of an attempt is a GPU-second; a CPU-only
worker's time is counted the same way. An attempt whose worker was lost counts until the
reconciler noticed (the lease's length at most).

Storage counts each upload and artifact row of the project at its size, as the project sees it,
even where the blob store keeps one copy for rows with the same bytes; checkpoints are not
counted (they are deleted when a job succeeds, and by the retention pass).

The limits are the service's settings (`DISTILLERY_MAX_QUEUED_JOBS`, ...), overridden per
project by `projects.quotas` (`distill projects quota NAME --max-queued 20`): a name there with
a null value means no limit for that project; a name left out means the service's setting.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import ColumnElement, func, or_, select
from sqlalchemy.orm import InstrumentedAttribute, Session

from store.models import Artifact, Job, JobEvent, JobStatus, Project, Upload, utcnow
from store.settings import Settings

QUOTAS = (
    "max_running_jobs",
    "max_queued_jobs",
    "max_gpu_seconds_per_day",
    "max_storage_bytes",
    "rate_limit_per_minute",
)
DAY = timedelta(days=1)
# Retry-After for limits that free up when something else happens (a job ends, a user deletes
# files): a hint to come back, not a promise
JOBS_RETRY_AFTER_S = 60
STORAGE_RETRY_AFTER_S = 3600
RUNNING = (JobStatus.running, JobStatus.cancelling)
ATTEMPT_ENDS = frozenset(
    {JobStatus.queued, JobStatus.succeeded, JobStatus.failed, JobStatus.cancelled}
)


@dataclass(frozen=True)
class Exceeded:
    """A quota a request would go over: the API answers 429 with these in its body."""

    quota: str
    limit: float
    used: float
    retry_after: int  # seconds, for the Retry-After header
    message: str


# --- limits -----------------------------------------------------------------------------------


def project_quotas(s: Session, owner: str | None) -> dict[str, Any]:
    """The project's overrides ({} for a service without keys, or a project without any)."""
    if not owner:
        return {}
    quotas = s.scalars(select(Project.quotas).where(Project.name == owner)).first()
    return dict(quotas or {})


def limit_of(name: str, settings: Settings, overrides: Mapping[str, Any]) -> float | None:
    """The limit `name` has for a project with these overrides (None: no limit)."""
    if name not in QUOTAS:
        raise KeyError(name)
    if name in overrides:
        value = overrides[name]
        return None if value is None else float(value)
    value = getattr(settings, name)
    return None if value is None else float(value)


def set_quotas(
    s: Session, project: Project, changes: Mapping[str, float | str | None]
) -> dict[str, Any]:
    """Change a project's overrides: a number sets the limit, None means no limit for this
    project, "default" goes back to the service's setting. Returns the new overrides."""
    quotas = dict(project.quotas or {})
    for name, value in changes.items():
        if name not in QUOTAS:
            raise KeyError(name)
        if value == "default":
            quotas.pop(name, None)
        elif value is None:
            quotas[name] = None
        elif isinstance(value, str):
            raise ValueError(f"{name}: {value!r} is not a number, 'default' or None")
        else:
            if value < 0:
                raise ValueError(f"{name}: a limit cannot be negative")
            quotas[name] = int(value) if float(value).is_integer() else float(value)
    project.quotas = quotas or None  # a new object: the JSON column sees the change
    s.flush()
    return quotas


def lock_project(s: Session, owner: str | None) -> None:
    """Take the project's row lock until the transaction ends (PostgreSQL; SQLite serialises
    writers anyway): submissions of one project are checked against its quotas one at a time,
    and a deletion cannot interleave with a submission that names what it deletes."""
    if owner:
        s.execute(select(Project.id).where(Project.name == owner).with_for_update()).first()


# --- usage ------------------------------------------------------------------------------------


def _owned(column: InstrumentedAttribute[Any], owner: str | None) -> ColumnElement[bool]:
    return column.is_(None) if owner is None else column == owner


def running_jobs(s: Session, owner: str | None) -> int:
    q = select(func.count()).where(_owned(Job.owner, owner), Job.status.in_(RUNNING))
    return int(s.scalar(q) or 0)


def queued_jobs(s: Session, owner: str | None) -> int:
    q = select(func.count()).where(_owned(Job.owner, owner), Job.status == JobStatus.queued)
    return int(s.scalar(q) or 0)


def storage_bytes(s: Session, owner: str | None) -> int:
    """Uploads (owner "" on a service without keys) plus the artifacts of the project's jobs."""
    uploads = s.scalar(
        select(func.coalesce(func.sum(Upload.size_bytes), 0)).where(Upload.owner == (owner or ""))
    )
    artifacts = s.scalar(
        select(func.coalesce(func.sum(Artifact.size_bytes), 0))
        .join(Job, Artifact.job_id == Job.id)
        .where(_owned(Job.owner, owner))
    )
    return int(uploads or 0) + int(artifacts or 0)


def attempt_intervals(
    s: Session, owner: str | None, since: datetime, now: datetime
) -> list[tuple[datetime, datetime]]:
    """(start, end) of every attempt of the project's jobs that may overlap [since, now]: from
    the job's status events (see the module's docstring)."""
    candidates = select(Job.id).where(
        _owned(Job.owner, owner),
        or_(
            Job.status.in_(RUNNING),
            (Job.status == JobStatus.queued) & (Job.attempts > 0),  # requeued after a loss
            Job.finished_at >= since,
        ),
    )
    rows = s.execute(
        select(JobEvent.job_id, JobEvent.at, JobEvent.status)
        .where(JobEvent.job_id.in_(candidates), JobEvent.kind == "status")
        .order_by(JobEvent.job_id, JobEvent.id)
    )
    intervals: list[tuple[datetime, datetime]] = []
    job: str | None = None
    start: datetime | None = None
    for job_id, at, status in rows:
        if job_id != job:
            if start is not None:  # the previous job's attempt is still going
                intervals.append((start, now))
            job, start = job_id, None
        if status == JobStatus.running:
            if start is not None:  # taken over by a new claim after a lost lease
                intervals.append((start, at))
            start = at
        elif status in ATTEMPT_ENDS and start is not None:
            intervals.append((start, at))
            start = None
    if start is not None:
        intervals.append((start, now))
    return [(a, min(b, now)) for a, b in intervals if min(b, now) > a and b > since]


def _overlap(intervals: list[tuple[datetime, datetime]], since: datetime, until: datetime) -> float:
    total = 0.0
    for start, end in intervals:
        lo, hi = max(start, since), min(end, until)
        if hi > lo:
            total += (hi - lo).total_seconds()
    return total


def gpu_seconds(s: Session, owner: str | None, now: datetime | None = None) -> float:
    """GPU-seconds the project used in the 24 h before `now`."""
    now = now or utcnow()
    return _overlap(attempt_intervals(s, owner, now - DAY, now), now - DAY, now)


def _gpu_retry_after(
    intervals: list[tuple[datetime, datetime]], now: datetime, limit: float
) -> int:
    """Seconds until the usage already recorded slides out of the 24 h window far enough to be
    under `limit` (time still being used by running jobs only makes it later)."""
    if limit <= 0:
        return int(DAY.total_seconds())
    lo, hi = 0, int(DAY.total_seconds())
    while lo < hi:  # the usage only falls as the window moves on: bisect for the first second
        mid = (lo + hi) // 2
        if _overlap(intervals, now + timedelta(seconds=mid) - DAY, now) < limit:
            hi = mid
        else:
            lo = mid + 1
    return max(1, lo)


# --- checks -----------------------------------------------------------------------------------


def _count(n: float) -> str:
    return f"{n:g}"


def check_jobs(
    s: Session, owner: str | None, settings: Settings, now: datetime | None = None
) -> Exceeded | None:
    """The first quota a new (or retried) job of the project would go over, else None."""
    now = now or utcnow()
    overrides = project_quotas(s, owner)
    who = f"project {owner!r}" if owner else "this service"

    limit = limit_of("max_queued_jobs", settings, overrides)
    if limit is not None and (used := queued_jobs(s, owner)) >= limit:
        return Exceeded(
            "max_queued_jobs",
            limit,
            used,
            JOBS_RETRY_AFTER_S,
            f"{who} has {used} jobs queued and may have at most {_count(limit)}; submit again "
            "when the queue has moved on (or cancel a queued job)",
        )
    limit = limit_of("max_running_jobs", settings, overrides)
    if limit is not None and (used := running_jobs(s, owner)) >= limit:
        return Exceeded(
            "max_running_jobs",
            limit,
            used,
            JOBS_RETRY_AFTER_S,
            f"{who} has {used} jobs running and may run at most {_count(limit)} at once; submit "
            "again when one has finished (or cancel one)",
        )
    limit = limit_of("max_gpu_seconds_per_day", settings, overrides)
    if limit is not None:
        intervals = attempt_intervals(s, owner, now - DAY, now)
        used_s = _overlap(intervals, now - DAY, now)
        if used_s >= limit:
            wait = _gpu_retry_after(intervals, now, limit)
            return Exceeded(
                "max_gpu_seconds_per_day",
                limit,
                round(used_s, 1),
                wait,
                f"{who} used {used_s:.0f} GPU-seconds in the last 24 h and may use "
                f"{_count(limit)}; enough of them leave the 24 h window in {wait} s",
            )
    return check_storage(s, owner, settings, overrides=overrides)


def check_storage(
    s: Session,
    owner: str | None,
    settings: Settings,
    incoming: int = 0,
    overrides: Mapping[str, Any] | None = None,
) -> Exceeded | None:
    """Whether the project is at its storage limit already, or `incoming` more bytes would take
    it over; None when there is room."""
    if overrides is None:
        overrides = project_quotas(s, owner)
    limit = limit_of("max_storage_bytes", settings, overrides)
    if limit is None:
        return None
    used = storage_bytes(s, owner)
    if used < limit and used + incoming <= limit:
        return None
    who = f"project {owner!r}" if owner else "this service"
    more = f" and this upload needs {incoming} more" if incoming else ""
    return Exceeded(
        "max_storage_bytes",
        limit,
        used,
        STORAGE_RETRY_AFTER_S,
        f"{who} stores {used} bytes of uploads and artifacts{more}; its limit is "
        f"{_count(limit)} bytes. Delete jobs or uploads it no longer needs (DELETE "
        "/v1/jobs/{id}, DELETE /v1/uploads/{id}) or ask an admin for a larger quota",
    )


def usage(
    s: Session, owner: str | None, settings: Settings, now: datetime | None = None
) -> list[dict[str, Any]]:
    """Each quota of the project: limit, where it comes from, what is used now (for admins)."""
    overrides = project_quotas(s, owner)
    used: dict[str, float | None] = {
        "max_running_jobs": running_jobs(s, owner),
        "max_queued_jobs": queued_jobs(s, owner),
        "max_gpu_seconds_per_day": round(gpu_seconds(s, owner, now), 1),
        "max_storage_bytes": storage_bytes(s, owner),
        "rate_limit_per_minute": None,  # lives in Redis (or the API process), per key
    }
    return [
        {
            "quota": name,
            "limit": limit_of(name, settings, overrides),
            "source": "project" if name in overrides else "service",
            "used": used[name],
        }
        for name in QUOTAS
    ]
