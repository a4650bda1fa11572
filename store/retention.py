"""Deleting: a job or an upload on its project's request, and what nobody needs any more.

Nothing live is ever deleted:

- a job is deleted only once it has ended (succeeded, failed, cancelled), and not while a queued
  or running job names it (`student.checkpoint: job:<id>`); an upload not while a queued or
  running job names it (`upload:<id>`);
- blobs are content-addressed and shared by every row with the same bytes (another project's
  upload of the same file, an artifact equal to an upload): a blob goes only when no upload or
  artifact row names its sha256 any more, and only if it was not written in the last
  `gc_grace_seconds` (an upload or a job's export may be storing those bytes right now, its row
  not committed yet; `BlobStore.delete` checks that without a race);
- checkpoints of a job that is queued, running or cancelling are never touched; the rows of a
  job are locked while its files go, so a retry cannot slip in between.

`collect` is the garbage collector (`distill gc`; one bounded pass):

1. checkpoints (`checkpoints/<job id>/` named blobs): those of succeeded jobs (nothing can
   resume from them; the worker deletes them itself, this catches what a crash left), of failed
   and cancelled jobs that finished more than `retention_days` ago (until then a retry resumes
   from them), and of jobs that no longer exist (older than the grace period);
2. artifacts of jobs that finished more than `retention_days` ago (unset: kept forever): the
   rows and, where no other row shares them, their blobs; the job keeps its record, evaluation
   and report, with an event saying its artifacts were deleted;
3. orphan blobs that no row names, older than the grace period, and temporary files left by
   interrupted writes.
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, delete, exists, select
from sqlalchemy.orm import Session

from kdcore.spec import JOB_PREFIX, UPLOAD_PREFIX
from store.blobs import BlobStore
from store.jobs import add_event
from store.models import TERMINAL, Artifact, Job, JobStatus, Upload, utcnow
from store.quotas import lock_project
from store.settings import Settings

# the named blobs a worker checkpoints into: `checkpoints/<job id>/<stage>` (worker/checkpoints.py)
CHECKPOINTS = "checkpoints"
ACTIVE = (JobStatus.queued, JobStatus.running, JobStatus.cancelling)
BATCH = 500


def checkpoint_prefix(job_id: str) -> str:
    return f"{CHECKPOINTS}/{job_id}"


class JobNotFinished(Exception):
    """The job is queued, running or cancelling: it must end (be cancelled) first."""

    def __init__(self, job: Job):
        self.status = job.status
        super().__init__(
            f"job {job.id!r} is {job.status}; cancel it first (POST /v1/jobs/{job.id}/cancel) "
            "and delete it once it has stopped"
        )


class InUse(Exception):
    """A queued or running job names the job or upload to be deleted."""

    def __init__(self, what: str, used_by: list[str]):
        self.used_by = used_by
        super().__init__(
            f"{what} is named by {len(used_by)} queued or running job(s) of this project "
            f"({', '.join(used_by)}); delete it when they have ended, or cancel them first"
        )


@dataclass
class Deleted:
    """What one deletion removed: files are counted when they were really deleted."""

    blobs: int = 0  # content-addressed files
    bytes: int = 0  # their sizes, and those of deleted checkpoints and temporary files
    shared: int = 0  # blobs kept because another row still names their bytes
    recent: int = 0  # blobs kept because they were written within the grace period

    def add(self, other: Deleted) -> None:
        for name, value in asdict(other).items():
            setattr(self, name, getattr(self, name) + value)


# --- references -------------------------------------------------------------------------------


def _strings(value: Any) -> Iterator[str]:
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for item in value.values():
            yield from _strings(item)
    elif isinstance(value, list):
        for item in value:
            yield from _strings(item)


def active_users(s: Session, owner: str | None, ref: str) -> list[str]:
    """Ids of the queued, running or cancelling jobs of `owner` whose spec names `ref`
    (`upload:<id>` or `job:<id>`) anywhere."""
    q = select(Job.id, Job.spec).where(Job.status.in_(ACTIVE))
    q = q.where(Job.owner.is_(None) if owner is None else Job.owner == owner)
    return [job_id for job_id, spec in s.execute(q) if ref in set(_strings(spec))]


def referenced(s: Session, shas: Iterable[str]) -> set[str]:
    """The sha256s among `shas` that an upload or an artifact row names."""
    wanted = list(set(shas))
    found: set[str] = set()
    for i in range(0, len(wanted), BATCH):
        chunk = wanted[i : i + BATCH]
        found.update(s.scalars(select(Upload.sha256).where(Upload.sha256.in_(chunk))))
        found.update(s.scalars(select(Artifact.storage_key).where(Artifact.storage_key.in_(chunk))))
    return found


def delete_unreferenced(
    s: Session, blobs: BlobStore, shas: Iterable[str], written_before: float
) -> Deleted:
    """Delete the blobs among `shas` that no row names (call after the rows' deletion is
    committed) and that were written before `written_before` (POSIX time)."""
    out = Deleted()
    shas = set(shas)
    shared = referenced(s, shas)
    out.shared = len(shared)
    for sha in sorted(shas - shared):
        size = blobs.delete(sha, written_before)
        if size is None:
            out.recent += blobs.exists(sha)
        else:
            out.blobs += 1
            out.bytes += size
    return out


def _tree_size(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def _newest(path: Path) -> float:
    """The latest modification time under `path` (the folder's own when it is empty)."""
    times = [p.stat().st_mtime for p in path.rglob("*")]
    return max([path.stat().st_mtime, *times])


def delete_checkpoints(blobs: BlobStore, job_id: str) -> int:
    """Delete a job's checkpoints; the bytes freed."""
    folder = blobs.named_path(checkpoint_prefix(job_id))
    if not folder.exists():
        return 0
    size = _tree_size(folder)
    shutil.rmtree(folder, ignore_errors=True)
    return size


# --- deleting on request ----------------------------------------------------------------------


def delete_job(s: Session, blobs: BlobStore, job: Job, settings: Settings) -> Deleted:
    """Delete a finished job: its rows (events, metrics, artifacts, evaluation, idempotency key,
    webhook deliveries), its checkpoints and the blobs of its artifacts that no other row
    shares. The caller holds the locks (`lock_project`, then the job's row) and this commits.
    Raises `JobNotFinished` or `InUse` (nothing deleted)."""
    if job.status not in TERMINAL:
        raise JobNotFinished(job)
    users = active_users(s, job.owner, f"{JOB_PREFIX}{job.id}")
    if users:
        raise InUse(f"job {job.id!r}", users)
    job_id = job.id
    shas = {a.storage_key for a in job.artifacts}
    s.delete(job)
    s.commit()
    out = Deleted(bytes=delete_checkpoints(blobs, job_id))
    out.add(delete_unreferenced(s, blobs, shas, time.time() - settings.gc_grace_seconds))
    return out


def delete_upload(s: Session, blobs: BlobStore, upload: Upload, settings: Settings) -> Deleted:
    """Delete an upload and, unless another row shares its bytes, its blob. The caller holds
    the project's lock; this commits. Raises `InUse` (nothing deleted)."""
    users = active_users(s, upload.owner or None, f"{UPLOAD_PREFIX}{upload.id}")
    if users:
        raise InUse(f"upload {upload.id!r}", users)
    sha = upload.sha256
    s.delete(upload)
    s.commit()
    return delete_unreferenced(s, blobs, [sha], time.time() - settings.gc_grace_seconds)


# --- garbage collection -----------------------------------------------------------------------


@dataclass
class GcReport:
    """What one pass deleted (or, with `dry_run`, found to delete)."""

    checkpoints: int = 0  # jobs whose checkpoints were deleted
    artifacts: int = 0  # artifact rows deleted by retention
    jobs_in_use: int = 0  # jobs past retention kept because an active job names them
    orphan_blobs: int = 0  # blobs no row names
    blobs: int = 0  # blob files deleted in all (orphans and retention's)
    tmp_files: int = 0  # leftovers of interrupted writes
    bytes: int = 0  # freed
    dry_run: bool = False

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def collect(
    engine: Engine,
    blobs: BlobStore,
    settings: Settings,
    *,
    now: datetime | None = None,
    limit: int = 1000,
    dry_run: bool = False,
) -> GcReport:
    """One garbage-collection pass (see the module's docstring); `limit` bounds what each of
    its steps deletes, so a pass over a large backlog stays short (the next pass goes on).
    `now` stands in for the clock (tests)."""
    now = now or utcnow()
    report = GcReport(dry_run=dry_run)
    written_before = now.timestamp() - settings.gc_grace_seconds
    retention = timedelta(days=settings.retention_days) if settings.retention_days else None
    _checkpoints(engine, blobs, now, retention, written_before, limit, dry_run, report)
    if retention is not None:
        _artifacts(engine, blobs, settings, now - retention, written_before, limit, dry_run, report)
    _orphans(engine, blobs, written_before, limit, dry_run, report)
    return report


def _session(engine: Engine) -> Session:
    return Session(engine, expire_on_commit=False)


def _checkpoints(
    engine: Engine,
    blobs: BlobStore,
    now: datetime,
    retention: timedelta | None,
    written_before: float,
    limit: int,
    dry_run: bool,
    report: GcReport,
) -> None:
    root = blobs.root / "named" / CHECKPOINTS
    if not root.is_dir():
        return
    for folder in sorted(root.iterdir()):
        if report.checkpoints >= limit:
            return
        if not folder.is_dir():
            continue
        with _session(engine) as s:
            # locked: a retry of this job waits until its checkpoints are gone (or kept)
            job = s.get(Job, folder.name, with_for_update=True)
            if job is None:
                wanted = _newest(folder) < written_before
            elif job.status == JobStatus.succeeded:
                wanted = True
            elif job.status in TERMINAL:
                wanted = (
                    retention is not None
                    and job.finished_at is not None
                    and job.finished_at < now - retention
                )
            else:  # queued, running, cancelling: live
                wanted = False
            if wanted:
                report.checkpoints += 1
                if not dry_run:
                    report.bytes += delete_checkpoints(blobs, folder.name)
            s.commit()


def _artifacts(
    engine: Engine,
    blobs: BlobStore,
    settings: Settings,
    cutoff: datetime,
    written_before: float,
    limit: int,
    dry_run: bool,
    report: GcReport,
) -> None:
    expired = (
        Job.status.in_(TERMINAL),
        Job.finished_at < cutoff,
        exists().where(Artifact.job_id == Job.id),
    )
    with _session(engine) as s:
        candidates = list(
            s.execute(
                select(Job.id, Job.owner).where(*expired).order_by(Job.finished_at).limit(limit)
            )
        )
    for job_id, owner in candidates:
        if report.artifacts >= limit:
            return
        with _session(engine) as s:
            lock_project(s, owner)  # no submission naming job:<id> can pass its check meanwhile
            job = s.scalars(select(Job).where(Job.id == job_id, *expired).with_for_update()).first()
            if job is None:  # retried, deleted or cleaned meanwhile
                continue
            if active_users(s, owner, f"{JOB_PREFIX}{job_id}"):
                report.jobs_in_use += 1
                continue
            rows = list(s.scalars(select(Artifact).where(Artifact.job_id == job_id)))
            report.artifacts += len(rows)
            if dry_run:
                continue
            shas = {a.storage_key for a in rows}
            s.execute(delete(Artifact).where(Artifact.job_id == job_id))
            days = f"{settings.retention_days:g}"
            add_event(
                s,
                job_id,
                "retention",
                f"artifacts deleted ({', '.join(sorted(a.format for a in rows))}): the job "
                f"ended more than {days} days ago (DISTILLERY_RETENTION_DAYS)",
                data={"formats": sorted(a.format for a in rows), "retention_days": days},
            )
            s.commit()
            freed = delete_unreferenced(s, blobs, shas, written_before)
            report.blobs += freed.blobs
            report.bytes += freed.bytes


def _orphans(
    engine: Engine,
    blobs: BlobStore,
    written_before: float,
    limit: int,
    dry_run: bool,
    report: GcReport,
) -> None:
    deleted = 0
    batch: list[str] = []

    def sweep() -> int:
        with _session(engine) as s:
            named = referenced(s, batch)
        count = 0
        for sha in batch:
            if sha in named or deleted + count >= limit:
                continue
            if dry_run:
                count += 1
                continue
            size = blobs.delete(sha, written_before)
            if size is not None:
                count += 1
                report.blobs += 1
                report.bytes += size
        batch.clear()
        return count

    for sha, st in blobs.blobs():
        if st.st_mtime < written_before:
            batch.append(sha)
        if len(batch) >= BATCH:
            deleted += sweep()
        if deleted >= limit:
            break
    if batch and deleted < limit:
        deleted += sweep()
    report.orphan_blobs = deleted

    for path in sorted((blobs.root / "tmp").iterdir()):
        if report.tmp_files >= limit:
            break
        try:
            st = path.stat()
            if not path.is_file() or st.st_mtime >= written_before:
                continue
            if not dry_run:
                path.unlink()
                report.bytes += st.st_size
            report.tmp_files += 1
        except FileNotFoundError:  # finished (renamed into place) while we looked
            continue
