"""The reconciler against real PostgreSQL and Redis (and the filesystem transport): lost jobs
come back, jobs whose message vanished are enqueued again, and a job whose message is still
in the broker is not enqueued twice.

The database is shared with the rest of the test session, so a pass may also pick up other
tests' old jobs: assertions look at this test's own jobs only."""

from __future__ import annotations

import json
import time
import uuid
from datetime import timedelta
from pathlib import Path
from typing import Any

import redis
from celery import Celery

from store.blobs import BlobStore
from store.models import JobEvent, utcnow
from store.queue import enqueue
from store.settings import Settings
from worker.app import make_celery
from worker.reconciler import broker_job_ids, gc_due, job_id_of, reconcile, run_reconciler

LONG_AGO = timedelta(hours=1)


def queued_ids(redis_url: str, queue: str) -> list[str]:
    client = redis.Redis.from_url(redis_url)
    return [job_id_of(json.loads(raw)) or "" for raw in client.lrange(queue, 0, -1)]


def reconcile_events(jobs: Any, job_id: str) -> list[JobEvent]:
    return [e for e in jobs.rows(JobEvent, job_id) if e.kind == "reconcile"]


def test_running_job_with_an_expired_lease_is_requeued(
    jobs: Any, settings: Settings, engine: Any, app: Celery, redis_url: str
) -> None:
    job_id = jobs.make(
        status="running",
        attempts=1,
        worker="dead-worker",
        heartbeat_at=utcnow() - LONG_AGO,
        lease_expires_at=utcnow() - timedelta(seconds=5),
    )
    counts = reconcile(settings, engine, app)
    assert counts["lost_requeued"] >= 1
    job = jobs.get(job_id)
    assert job.status == "queued" and job.enqueued_at is not None
    assert queued_ids(redis_url, settings.queue).count(job_id) == 1
    assert len(reconcile_events(jobs, job_id)) == 1

    # The fresh message is found on the next pass: nothing is sent again.
    jobs.set(job_id, enqueued_at=utcnow() - LONG_AGO)
    reconcile(settings, engine, app)
    assert queued_ids(redis_url, settings.queue).count(job_id) == 1
    assert len(reconcile_events(jobs, job_id)) == 1


def test_cancelling_job_whose_worker_was_lost_ends_cancelled(
    jobs: Any, settings: Settings, engine: Any, app: Celery, redis_url: str
) -> None:
    job_id = jobs.make(
        status="cancelling", attempts=1, lease_expires_at=utcnow() - timedelta(seconds=5)
    )
    reconcile(settings, engine, app)
    assert jobs.get(job_id).status == "cancelled"
    assert job_id not in queued_ids(redis_url, settings.queue)


def test_stale_queued_job_without_a_message_is_enqueued_again(
    jobs: Any, settings: Settings, engine: Any, app: Celery, redis_url: str
) -> None:
    job_id = jobs.make(enqueued_at=utcnow() - LONG_AGO)
    fresh = jobs.make()  # queued a moment ago: its message may simply not be sent yet
    counts = reconcile(settings, engine, app)
    assert counts["reenqueued"] >= 1
    assert queued_ids(redis_url, settings.queue).count(job_id) == 1
    job = jobs.get(job_id)
    assert job.status == "queued" and job.enqueued_at > utcnow() - timedelta(minutes=1)
    (event,) = reconcile_events(jobs, job_id)
    assert "no broker message" in event.message
    assert reconcile_events(jobs, fresh) == []

    # The message carries the time limits of the job's spec, like the API's enqueue.
    client = redis.Redis.from_url(redis_url)
    (raw,) = [m for m in client.lrange(settings.queue, 0, -1) if job_id_of(json.loads(m)) == job_id]
    assert json.loads(raw)["headers"]["timelimit"] == [6 * 3600 + 60, 6 * 3600]


def test_stale_queued_job_whose_message_is_waiting_is_left_alone(
    jobs: Any, settings: Settings, engine: Any, app: Celery, redis_url: str
) -> None:
    job_id = jobs.make()
    enqueue(job_id, 600, app)
    jobs.set(job_id, enqueued_at=utcnow() - LONG_AGO)  # waited long behind other jobs
    counts = reconcile(settings, engine, app)
    assert counts["in_broker"] >= 1
    assert queued_ids(redis_url, settings.queue).count(job_id) == 1
    assert reconcile_events(jobs, job_id) == []


def deliver(redis_url: str, queue: str, delivered_at: float) -> str:
    """Do what a worker's consumer does with the next message: take it off the queue and keep
    it in kombu's `unacked` hash, indexed by its delivery time; returns its delivery tag."""
    client = redis.Redis.from_url(redis_url)
    raw = client.rpop(queue)
    assert raw is not None
    tag = f"test-{uuid.uuid4().hex}"
    client.hset("unacked", tag, json.dumps([json.loads(raw), "", queue]))
    client.zadd("unacked_index", {tag: delivered_at})
    return tag


def forget(redis_url: str, tag: str) -> None:
    client = redis.Redis.from_url(redis_url)
    client.hdel("unacked", tag)
    client.zrem("unacked_index", tag)


def test_a_recently_delivered_unacknowledged_message_counts_as_present(
    jobs: Any, settings: Settings, engine: Any, app: Celery, redis_url: str
) -> None:
    job_id = jobs.make(enqueued_at=utcnow() - LONG_AGO)
    enqueue(job_id, 600, app)
    tag = deliver(redis_url, settings.queue, delivered_at=time.time())
    try:
        assert job_id in broker_job_ids(app, delivered_within=settings.requeue_after_seconds)
        reconcile(settings, engine, app)
        assert job_id not in queued_ids(redis_url, settings.queue)
        assert reconcile_events(jobs, job_id) == []
    finally:
        forget(redis_url, tag)


def test_a_message_delivered_long_ago_to_a_worker_that_never_claimed_is_replaced(
    jobs: Any, settings: Settings, engine: Any, app: Celery, redis_url: str
) -> None:
    """Issue #11, item 1: the worker died between delivery and claim; its entry in `unacked`
    would come back only after the visibility timeout (a day)."""
    job_id = jobs.make(enqueued_at=utcnow() - LONG_AGO)
    enqueue(job_id, 600, app)
    long_ago = time.time() - LONG_AGO.total_seconds()
    tag = deliver(redis_url, settings.queue, delivered_at=long_ago)
    try:
        assert job_id in broker_job_ids(app)  # in the broker, but not live:
        assert job_id not in broker_job_ids(app, delivered_within=settings.requeue_after_seconds)
        counts = reconcile(settings, engine, app)
        assert counts["reenqueued"] >= 1
        assert queued_ids(redis_url, settings.queue).count(job_id) == 1
        (event,) = reconcile_events(jobs, job_id)
        assert "no broker message" in event.message and "delivered" in event.message

        # The fresh message waits on the queue: the next pass leaves the job alone.
        jobs.set(job_id, enqueued_at=utcnow() - LONG_AGO)
        reconcile(settings, engine, app)
        assert queued_ids(redis_url, settings.queue).count(job_id) == 1
        assert len(reconcile_events(jobs, job_id)) == 1
    finally:
        forget(redis_url, tag)


def test_an_unacknowledged_entry_missing_from_the_index_is_not_live(
    jobs: Any, settings: Settings, app: Celery, redis_url: str
) -> None:
    """Kombu writes the entry and its index score together and restores by the index only: an
    entry without a score would never come back."""
    job_id = jobs.make()
    enqueue(job_id, 600, app)
    tag = deliver(redis_url, settings.queue, delivered_at=time.time())
    redis.Redis.from_url(redis_url).zrem("unacked_index", tag)
    try:
        assert job_id not in broker_job_ids(app, delivered_within=settings.requeue_after_seconds)
    finally:
        forget(redis_url, tag)


def test_filesystem_transport(jobs: Any, settings: Settings, engine: Any, tmp_path: Path) -> None:
    fs_settings = settings.model_copy(update={"broker_url": "", "data_dir": tmp_path / "fs"})
    app = make_celery(fs_settings)
    folder = fs_settings.broker_folder / "queue"

    def files_for(job_id: str) -> list[Path]:
        return [p for p in folder.iterdir() if job_id_of(json.loads(p.read_bytes())) == job_id]

    try:
        job_id = jobs.make(enqueued_at=utcnow() - LONG_AGO)
        assert job_id not in broker_job_ids(app)
        reconcile(fs_settings, engine, app)
        assert job_id in broker_job_ids(app)
        (file,) = files_for(job_id)
        assert file.name.endswith(f".{settings.queue}.msg")
        jobs.set(job_id, enqueued_at=utcnow() - LONG_AGO)
        reconcile(fs_settings, engine, app)
        assert len(files_for(job_id)) == 1
        assert len(reconcile_events(jobs, job_id)) == 1
    finally:
        app.close()


def test_job_id_of_reads_only_run_job_messages() -> None:
    assert job_id_of({"headers": {"task": "distillery.reconcile"}, "body": "W10="}) is None
    by_repr = {"headers": {"task": "distillery.run_job", "argsrepr": "['abc']"}, "body": "?"}
    assert job_id_of(by_repr) == "abc"


def test_gc_runs_every_gc_seconds_and_never_when_zero(settings: Settings) -> None:
    hourly = settings.model_copy(update={"gc_seconds": 3600.0})
    assert gc_due(hourly, None, 100.0)  # the first pass collects
    assert not gc_due(hourly, 100.0, 100.0 + 3599)
    assert gc_due(hourly, 100.0, 100.0 + 3600)
    assert not gc_due(settings.model_copy(update={"gc_seconds": 0.0}), None, 100.0)


def test_a_reconciler_pass_collects_orphan_blobs(
    settings: Settings, engine: Any, tmp_path: Path
) -> None:
    """Retention needs no cron job: the reconciler's pass runs the GC (store/retention.py)."""
    gc = settings.model_copy(
        update={"blob_dir": tmp_path / "blobs", "gc_grace_seconds": 0.0, "gc_seconds": 3600.0}
    )
    blobs = BlobStore(gc.resolved_blob_dir)
    orphan, _ = blobs.put_stream([b"bytes no row names"])
    app = make_celery(gc)
    try:
        counts = run_reconciler(gc, engine, app, once=True)
    finally:
        app.close()
    assert counts["gc_deleted"] == 1 and not blobs.exists(orphan)
