"""The reconciler: the database says what should run, the broker only carries job ids, and this
puts the two back in agreement.

(a) Running jobs whose lease expired (their worker died or hung) go back to `queued`
    (`store.jobs.recover_lost`) and get a fresh message.
(b) Queued jobs that have waited longer than `requeue_after_seconds` are looked for in the
    broker; when no live message for them is there (lost with a broker restart, never sent, or
    delivered to a worker that died before it claimed the job) they are enqueued again.

(c) Webhooks that are due (store/webhooks.py) get one delivery attempt each.
(d) Every `gc_seconds`, one bounded garbage-collection pass (store/retention.py): checkpoints of
    finished jobs, artifacts past `retention_days`, orphan blobs.

Enqueueing twice is harmless (a second delivery is a no-op, see store.jobs.claim), but a long
queue is normal, so (b) only re-enqueues what is really missing. Inspecting the broker is
possible for the Redis transport (the queue lists and the `unacked` hash that holds delivered,
unacknowledged messages) and the filesystem transport (one file per message); for any other
transport (b) is skipped and counted as `uninspectable`.

A delivered, unacknowledged message counts as live only while it was delivered less than
`requeue_after_seconds` ago (its delivery time is its score in kombu's `unacked_index`): a live
worker claims the job within seconds of the delivery, so a job still queued long after its
message was delivered went to a worker that died first. Kombu would give that message back only
after the visibility timeout (`max_job_runtime_s` + 1 h: a day by default); until then it is the
dead worker's, and the job gets a fresh message instead (issue #11: a job stuck queued ~25 h).
The entry itself is left to kombu: the message it gives back a day later finds the job claimed
or finished and is dropped before it costs a child (worker/gate.py). The delivery time is the
worker's clock: clocks must agree to well within `requeue_after_seconds`.

Run it with `python -m worker.reconcile_loop` (every `reconcile_seconds`; `--once` for one
pass), or as the `distillery.reconcile` task from celery beat.
"""

from __future__ import annotations

import ast
import base64
import json
import logging
import time
from collections.abc import Iterable
from datetime import timedelta
from pathlib import Path
from typing import Any

from celery import Celery
from sqlalchemy import Engine

from kdcore.spec import JobSpec, TrainSpec
from store.blobs import BlobStore
from store.db import session_scope
from store.jobs import add_event, mark_enqueued, recover_lost, stale_queued
from store.models import Job
from store.queue import RUN_JOB, enqueue
from store.retention import collect
from store.settings import Settings
from worker.webhooks import deliver_due

log = logging.getLogger(__name__)


def reconcile(settings: Settings, engine: Engine, celery_app: Celery) -> dict[str, int]:
    """One pass of (a) and (b); returns counts of what it found and did."""
    counts = {"lost_requeued": 0, "stale": 0, "in_broker": 0, "reenqueued": 0, "uninspectable": 0}
    with session_scope(engine) as s:
        lost = recover_lost(s)
    for job_id in lost:
        _send(engine, celery_app, settings, job_id, "worker lost; job re-enqueued")
        counts["lost_requeued"] += 1

    older_than = timedelta(seconds=settings.requeue_after_seconds)
    with session_scope(engine) as s:
        stale = stale_queued(s, older_than)
    counts["stale"] = len(stale)
    if stale:
        present = broker_job_ids(celery_app, delivered_within=settings.requeue_after_seconds)
        if present is None:
            counts["uninspectable"] = len(stale)
        else:
            missing = [j for j in stale if j not in present]
            counts["in_broker"] = len(stale) - len(missing)
            if missing:
                # A worker may have taken a message between our two reads; only jobs still
                # queued and stale now are sent again.
                with session_scope(engine) as s:
                    still = set(stale_queued(s, older_than))
                for job_id in missing:
                    if job_id in still:
                        _send(
                            engine,
                            celery_app,
                            settings,
                            job_id,
                            "no broker message for the queued job (none waiting, none "
                            f"delivered in the last {settings.requeue_after_seconds:.0f} s); "
                            "re-enqueued",
                        )
                        counts["reenqueued"] += 1
    counts["webhooks"] = _webhooks(settings, engine)
    if any(counts[k] for k in ("lost_requeued", "reenqueued", "uninspectable", "webhooks")):
        log.info("reconcile: %s", counts)
    return counts


def _webhooks(settings: Settings, engine: Engine) -> int:
    """(c) One attempt for each due webhook: those a worker left to retry later, and those of
    jobs that ended outside a worker (cancelled while queued, lost while cancelling)."""
    try:
        return len(deliver_due(engine, settings))
    except Exception:
        log.exception("reconcile: webhook deliveries failed; next pass retries")
        return 0


def _max_runtime(spec: dict[str, Any], settings: Settings) -> int:
    try:
        runtime = JobSpec.model_validate(spec).train.max_runtime_s
    except Exception:  # an unreadable spec fails in the worker, with a proper message
        runtime = TrainSpec().max_runtime_s
    return min(runtime, settings.max_job_runtime_s)


def _send(engine: Engine, app: Celery, settings: Settings, job_id: str, reason: str) -> None:
    """Enqueue after the state change is committed (a worker must find the job queued), then
    record it; if the broker is down the job stays stale and the next pass tries again."""
    with session_scope(engine) as s:
        job = s.get(Job, job_id)
        if job is None:
            return
        max_runtime = _max_runtime(job.spec, settings)
    enqueue(job_id, max_runtime, app)
    with session_scope(engine) as s:
        mark_enqueued(s, job_id)
        add_event(s, job_id, "reconcile", reason)
    log.info("job %s: %s", job_id, reason)


# --- looking into the broker ------------------------------------------------------------------


def job_id_of(message: dict[str, Any]) -> str | None:
    """The job id a kombu message for RUN_JOB carries (task protocol 2), else None."""
    headers = message.get("headers") or {}
    if headers.get("task") != RUN_JOB:
        return None
    try:
        body: Any = message.get("body", "")
        if (message.get("properties") or {}).get("body_encoding") == "base64":
            body = base64.b64decode(body)
        args = json.loads(body)[0]
        return str(args[0])
    except Exception:
        pass
    try:  # other serialisers: the readable copy of the arguments
        return str(ast.literal_eval(headers.get("argsrepr", ""))[0])
    except Exception:
        return None


def _ids(raw_messages: Iterable[bytes | str], wrapped: bool = False) -> set[str]:
    found = set()
    for raw in raw_messages:
        try:
            message = json.loads(raw)
            if wrapped:  # unacked entries are [message, exchange, routing_key]
                message = message[0]
        except Exception:
            continue
        if isinstance(message, dict) and (job_id := job_id_of(message)):
            found.add(job_id)
    return found


def broker_job_ids(app: Celery, delivered_within: float | None = None) -> set[str] | None:
    """Job ids with a message in the broker on the app's queue: waiting, or delivered and not
    acknowledged (only if delivered less than `delivered_within` seconds ago, when given); None
    when the transport cannot be inspected."""
    queue = app.conf.task_default_queue
    with app.connection_for_read() as conn:
        driver = conn.transport.driver_type
        channel: Any = conn.default_channel
        if driver == "redis":
            return _redis_ids(channel, queue, delivered_within)
        if driver == "filesystem":
            return _filesystem_ids(Path(channel.data_folder_in), queue)
    log.warning("reconcile: cannot inspect a %s broker; stale queued jobs are left alone", driver)
    return None


def _redis_ids(channel: Any, queue: str, delivered_within: float | None) -> set[str]:
    client = channel.client  # the service sets no global_keyprefix
    keys = dict.fromkeys(channel._q_for_pri(queue, pri) for pri in channel.priority_steps)
    found: set[str] = set()
    for key in keys:
        found |= _ids(client.lrange(key, 0, -1))
    found |= _ids(_unacked(client, channel, delivered_within).values(), wrapped=True)
    return found


def _unacked(client: Any, channel: Any, delivered_within: float | None) -> dict[bytes, bytes]:
    """Delivered, unacknowledged entries by delivery tag; with `delivered_within`, only those
    delivered that recently (an entry missing from the index counts as old: kombu writes both
    in one transaction, and restores by the index only, so such an entry never comes back)."""
    with client.pipeline() as pipe:  # one snapshot: an ack between two reads would skew them
        pipe.hgetall(channel.unacked_key)
        pipe.zrange(channel.unacked_index_key, 0, -1, withscores=True)
        entries, index = pipe.execute()
    if delivered_within is None:
        return dict(entries)
    since = time.time() - delivered_within
    delivered_at = dict(index)
    return {tag: raw for tag, raw in entries.items() if delivered_at.get(tag, 0.0) >= since}


def _filesystem_ids(folder: Path, queue: str) -> set[str]:
    raw = []
    for path in folder.iterdir():
        if path.name.partition(".")[2] != f"{queue}.msg":  # kombu's own naming rule
            continue
        try:
            raw.append(path.read_bytes())
        except OSError:  # taken by a worker while we looked
            continue
    return _ids(raw)


# --- command line -----------------------------------------------------------------------------


def run_reconciler(
    settings: Settings | None = None,
    engine: Engine | None = None,
    app: Celery | None = None,
    *,
    once: bool = False,
    interval: float | None = None,
) -> dict[str, int]:
    """`distill reconcile [--once]`: one pass, or a pass every `interval` seconds (default
    `reconcile_seconds`) until interrupted; returns the last pass's counts."""
    from store.db import default_engine
    from store.settings import get_settings
    from worker.app import celery_app

    settings = settings or get_settings()
    engine = engine or default_engine()
    app = app or celery_app
    interval = interval if interval is not None else settings.reconcile_seconds
    last_gc: float | None = None
    while True:
        try:
            counts = reconcile(settings, engine, app)
        except Exception:
            if once:
                raise
            log.exception("reconcile pass failed; retrying in %.0f s", interval)
            counts = {}
        if gc_due(settings, last_gc, time.monotonic()):
            last_gc = time.monotonic()
            counts["gc_deleted"] = _collect(settings, engine)
        if once:
            return counts
        time.sleep(interval)


def gc_due(settings: Settings, last: float | None, now: float) -> bool:
    """A garbage-collection pass every `gc_seconds` (the first with the first reconcile pass);
    never when it is 0."""
    if settings.gc_seconds <= 0:
        return False
    return last is None or now - last >= settings.gc_seconds


def _collect(settings: Settings, engine: Engine) -> int:
    """One bounded retention/GC pass (store/retention.py); a failure waits for the next one.
    Returns the blob files it deleted."""
    try:
        report = collect(engine, BlobStore(settings.resolved_blob_dir), settings)
    except Exception:
        log.exception("garbage collection failed; the next pass retries")
        return 0
    log.info("gc: %s", report.as_dict())
    return report.blobs
