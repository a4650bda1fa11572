"""Garbage collection on PostgreSQL and a real blob folder: what each pass deletes and, above
all, what it never deletes (a live job's checkpoints, a blob another row names, a blob written
within the grace period, artifacts a queued job names). The clock is passed in (`now`), file
ages are set with os.utime: nothing waits."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from datetime import datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import Engine, select
from sqlalchemy.orm import Session

from kdcore.validation import parse_spec
from store import jobs
from store.blobs import BlobStore
from store.db import make_engine
from store.models import Artifact, Job, JobEvent, JobStatus, Upload, utcnow
from store.quotas import attempt_intervals, gpu_seconds
from store.retention import checkpoint_prefix, collect
from store.settings import Settings

DAY = timedelta(days=1)


@pytest.fixture
def engine(pg_url: str) -> Iterator[Engine]:
    engine = make_engine(pg_url)
    yield engine
    engine.dispose()


@pytest.fixture
def blobs(tmp_path: Path) -> BlobStore:
    return BlobStore(tmp_path / "blobs")


def settings(**values: object) -> Settings:
    return Settings(gc_grace_seconds=3600, **values)  # type: ignore[arg-type]


def age(path: Path, when: datetime) -> None:
    """Make a file (or every file in a folder) look last written at `when`."""
    files = [path] if path.is_file() else [p for p in path.rglob("*") if p.is_file()]
    for f in [*files, path]:
        os.utime(f, (when.timestamp(), when.timestamp()))


def new_job(
    engine: Engine,
    status: JobStatus,
    finished: datetime | None = None,
    owner: str | None = None,
    spec: dict[str, object] | None = None,
) -> str:
    base = {
        "name": f"gc-{uuid.uuid4().hex[:6]}",
        "teacher": {"arch": "mlp", "train": {}},
        "student": {"arch": "mlp"},
        "data": {"source": "digits"},
    }
    with Session(engine) as s:
        job = jobs.create_job(s, parse_spec({**base, **(spec or {})}), owner=owner)
        job.status = status
        job.finished_at = finished
        s.commit()
        return job.id


def checkpoint(blobs: BlobStore, job_id: str, when: datetime) -> Path:
    src = blobs.root / "tmp" / f"ckpt-{uuid.uuid4().hex}"
    src.write_bytes(b"weights " + job_id.encode())
    blobs.put_named(f"{checkpoint_prefix(job_id)}/distill", src)
    src.unlink()
    folder = blobs.named_path(checkpoint_prefix(job_id))
    age(folder, when)
    return folder


def artifact(engine: Engine, blobs: BlobStore, job_id: str, content: bytes, when: datetime) -> str:
    sha, size = blobs.put_stream([content])
    age(blobs.path(sha), when)
    with Session(engine) as s:
        s.add(
            Artifact(
                job_id=job_id,
                format=f"f{uuid.uuid4().hex[:6]}",
                filename="student.onnx",
                storage_key=sha,
                sha256=sha,
                size_bytes=size,
                max_abs_diff=0.0,
                created_at=when,
            )
        )
        s.commit()
    return sha


def test_checkpoints_go_only_when_no_job_can_use_them(engine: Engine, blobs: BlobStore) -> None:
    now = utcnow()
    long_ago, recently = now - 10 * DAY, now - timedelta(hours=2)
    live = {
        status: new_job(engine, status)
        for status in (JobStatus.queued, JobStatus.running, JobStatus.cancelling)
    }
    # a live job's checkpoints are kept however old they are
    for job_id in live.values():
        checkpoint(blobs, job_id, now - 30 * DAY)
    succeeded = new_job(engine, JobStatus.succeeded, finished=recently)
    failed_old = new_job(engine, JobStatus.failed, finished=long_ago)
    failed_new = new_job(engine, JobStatus.failed, finished=recently)
    cancelled_old = new_job(engine, JobStatus.cancelled, finished=long_ago)
    for job_id in (succeeded, failed_old, failed_new, cancelled_old):
        checkpoint(blobs, job_id, now - 30 * DAY)
    gone_job_old, gone_job_new = uuid.uuid4().hex, uuid.uuid4().hex
    checkpoint(blobs, gone_job_old, now - 2 * DAY)
    checkpoint(blobs, gone_job_new, now - timedelta(minutes=5))  # a write may be under way

    def present() -> set[str]:
        return {p.name for p in (blobs.root / "named" / "checkpoints").iterdir()}

    # no retention set: failed and cancelled jobs keep theirs (a retry resumes from them)
    dry = collect(engine, blobs, settings(), now=now, dry_run=True)
    assert dry.checkpoints == 2 and dry.dry_run
    report = collect(engine, blobs, settings(), now=now)
    assert report.checkpoints == 2 and report.bytes > 0
    kept = {*live.values(), failed_old, failed_new, cancelled_old, gone_job_new}
    assert present() == kept
    # with retention: failed and cancelled jobs that ended longer ago lose theirs
    report = collect(engine, blobs, settings(retention_days=7), now=now)
    assert report.checkpoints == 2
    assert present() == {*live.values(), failed_new, gone_job_new}
    # and a retried job (queued again) is live: kept even when it finished long ago
    with Session(engine) as s:
        job = s.get(Job, failed_new)
        assert job is not None
        jobs.retry(s, job)
        s.commit()
    collect(engine, blobs, settings(retention_days=7), now=now + 30 * DAY)
    assert present() == {*live.values(), failed_new}


def test_retention_deletes_old_artifacts_of_finished_jobs_only(
    engine: Engine, blobs: BlobStore
) -> None:
    now = utcnow()
    old, fresh = now - 40 * DAY, now - 5 * DAY
    expired = new_job(engine, JobStatus.succeeded, finished=old)
    young = new_job(engine, JobStatus.succeeded, finished=fresh)
    running = new_job(engine, JobStatus.running, finished=None)
    expired_sha = artifact(engine, blobs, expired, b"old student", old)
    shared_sha = artifact(engine, blobs, expired, b"same bytes", old)
    artifact(engine, blobs, young, b"same bytes", fresh)  # another job's artifact: same blob
    young_sha = artifact(engine, blobs, young, b"young student", fresh)
    running_sha = artifact(engine, blobs, running, b"running", old)

    # without a retention setting artifacts are kept forever
    assert collect(engine, blobs, settings(), now=now).artifacts == 0
    report = collect(engine, blobs, settings(retention_days=30), now=now)
    assert (report.artifacts, report.blobs) == (2, 1)
    with Session(engine) as s:
        left = {a.job_id: a.storage_key for a in s.scalars(select(Artifact))}
        assert expired not in left and young in left and running in left
        event = s.scalars(
            select(JobEvent).where(JobEvent.job_id == expired, JobEvent.kind == "retention")
        ).one()
        assert "30 days" in event.message
        assert s.get(Job, expired) is not None  # the job keeps its record
    assert not blobs.exists(expired_sha)
    assert blobs.exists(shared_sha)  # still named by the young job's artifact
    assert blobs.exists(young_sha) and blobs.exists(running_sha)
    # a second pass has nothing left to do
    again = collect(engine, blobs, settings(retention_days=30), now=now)
    assert (again.artifacts, again.blobs) == (0, 0)


def test_artifacts_a_queued_job_names_are_kept(engine: Engine, blobs: BlobStore) -> None:
    now = utcnow()
    owner = f"team-{uuid.uuid4().hex[:6]}"
    base = new_job(engine, JobStatus.succeeded, finished=now - 40 * DAY, owner=owner)
    sha = artifact(engine, blobs, base, b"weights to fine-tune", now - 40 * DAY)
    follower = new_job(
        engine,
        JobStatus.queued,
        owner=owner,
        spec={"student": {"arch": "mlp", "checkpoint": f"job:{base}"}},
    )
    report = collect(engine, blobs, settings(retention_days=30), now=now)
    assert (report.artifacts, report.jobs_in_use) == (0, 1)
    assert blobs.exists(sha)
    with Session(engine) as s:
        job = s.get(Job, follower)
        assert job is not None
        job.status = JobStatus.succeeded
        s.commit()
    report = collect(engine, blobs, settings(retention_days=30), now=now)
    assert report.artifacts == 1 and not blobs.exists(sha)


def test_orphan_blobs_go_after_the_grace_period(engine: Engine, blobs: BlobStore) -> None:
    now = utcnow()
    named, _ = blobs.put_stream([b"an upload's bytes"])
    with Session(engine) as s:
        s.add(Upload(owner="x", kind="model", filename="m.pt", sha256=named, size_bytes=17))
        s.commit()
    orphan, _ = blobs.put_stream([b"nobody's"])
    in_flight, _ = blobs.put_stream([b"an upload whose row is not committed yet"])
    for sha in (named, orphan):
        age(blobs.path(sha), now - DAY)
    stale_tmp = blobs.root / "tmp" / "upload-interrupted"
    stale_tmp.write_bytes(b"half a file")
    age(stale_tmp, now - DAY)
    live_tmp = blobs.root / "tmp" / "upload-streaming"
    live_tmp.write_bytes(b"still coming")

    report = collect(engine, blobs, settings(), now=now)
    assert (report.orphan_blobs, report.tmp_files) == (1, 1)
    assert not blobs.exists(orphan) and blobs.exists(named) and blobs.exists(in_flight)
    assert not stale_tmp.exists() and live_tmp.exists()
    # storing bytes that are already there counts as writing them: the grace period restarts
    age(blobs.path(in_flight), now - DAY)
    blobs.put_stream([b"an upload whose row is not committed yet"])
    assert collect(engine, blobs, settings(), now=now).orphan_blobs == 0
    assert blobs.exists(in_flight)
    # later, still without a row: it goes
    assert collect(engine, blobs, settings(), now=now + DAY).orphan_blobs == 1
    assert not blobs.exists(in_flight)


def test_a_pass_is_bounded(engine: Engine, blobs: BlobStore) -> None:
    now = utcnow()
    shas = [blobs.put_stream([f"orphan {i}".encode()])[0] for i in range(5)]
    for sha in shas:
        age(blobs.path(sha), now - DAY)
    assert collect(engine, blobs, settings(), now=now, limit=2).orphan_blobs == 2
    assert collect(engine, blobs, settings(), now=now, limit=2).orphan_blobs == 2
    assert collect(engine, blobs, settings(), now=now, limit=2).orphan_blobs == 1
    assert sum(blobs.exists(sha) for sha in shas) == 0


def test_blob_delete_keeps_a_blob_written_again_meanwhile(tmp_path: Path) -> None:
    """`BlobStore.delete` renames a blob away before deleting it and looks at its time once
    more: a writer that touched it in between wins."""
    blobs = BlobStore(tmp_path)
    sha, size = blobs.put_stream([b"contended"])
    cutoff = blobs.path(sha).stat().st_mtime + 1  # the blob is older than the cutoff
    assert blobs.delete(sha, cutoff - 10) is None  # too recent for an earlier cutoff
    assert blobs.delete(sha, cutoff) == size and not blobs.exists(sha)
    assert blobs.delete(sha, cutoff) is None  # gone already
    assert list((tmp_path / "tmp").iterdir()) == []


# --- GPU-seconds --------------------------------------------------------------------------------


def test_gpu_seconds_follow_the_attempts(engine: Engine) -> None:
    """Attempt 1 runs 10:00-11:00 and its worker is lost (requeued), attempt 2 runs 12:00 to
    now (13:00) and is still running: 2 h. A job that ran yesterday counts only inside the 24 h
    window; another project's job does not count."""
    owner = f"team-{uuid.uuid4().hex[:6]}"
    now = datetime.fromisoformat("2026-05-02T13:00:00+00:00")

    def events(job_id: str, *steps: tuple[str, str]) -> None:
        with Session(engine) as s:
            for status, at in steps:
                s.add(
                    JobEvent(
                        job_id=job_id,
                        kind="status",
                        status=status,
                        message=status,
                        at=datetime.fromisoformat(f"2026-05-{at}+00:00"),
                    )
                )
            s.commit()

    lost = new_job(engine, JobStatus.running, owner=owner)
    events(lost, ("running", "02T10:00:00"), ("queued", "02T11:00:00"), ("running", "02T12:00:00"))
    yesterday = new_job(
        engine, JobStatus.succeeded, owner=owner, finished=now - timedelta(hours=22)
    )
    events(
        yesterday,
        ("running", "01T11:00:00"),
        ("cancelling", "01T14:00:00"),  # still running until it stops
        ("cancelled", "01T15:00:00"),
    )
    other = new_job(engine, JobStatus.running, owner="someone-else")
    events(other, ("running", "02T00:00:00"))
    with Session(engine) as s:
        intervals = attempt_intervals(s, owner, now - DAY, now)
        assert len(intervals) == 3
        # 1 h + 1 h today, and 2 h of yesterday's 4 h run fall after 13:00 yesterday
        assert gpu_seconds(s, owner, now) == 4 * 3600
