"""Server-Sent Events for one job, fed by polling the database.

The database is the only thing api and worker share, so the stream polls it (a fresh session
per poll: a long-lived one would keep seeing its first snapshot and hold a connection). An event
goes out when status, progress, stage, epoch or attempt changes; a terminal state is sent as a
final `done` event and the stream closes. A comment line keeps proxies from timing it out.

Wire format (`text/event-stream`):

    event: job        data: JobSummary as JSON   (a change while the job is not finished)
    event: done       data: JobSummary as JSON   (the job finished; the stream then ends)
    event: error      data: {"detail": ...}      (the job vanished or the database failed)
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import AsyncIterator
from typing import Any

import anyio
from sqlalchemy.orm import Session, sessionmaker
from starlette.concurrency import run_in_threadpool

from api.schemas import JobSummary
from store.jobs import get_job
from store.models import TERMINAL

log = logging.getLogger("distillery.api")


def sse(event: str, data: Any, event_id: int | None = None) -> str:
    head = f"id: {event_id}\n" if event_id is not None else ""
    return f"{head}event: {event}\ndata: {json.dumps(data, separators=(',', ':'))}\n\n"


def _snapshot(sessions: sessionmaker[Session], job_id: str, owner: str | None) -> JobSummary | None:
    with sessions() as session:
        job = get_job(session, job_id, owner)
        return JobSummary.model_validate(job) if job is not None else None


def _key(s: JobSummary) -> tuple[Any, ...]:
    return (s.status, s.progress, s.stage, s.current_epoch, s.attempts)


async def job_events(
    sessions: sessionmaker[Session],
    job_id: str,
    owner: str | None,
    poll_s: float = 0.5,
    keepalive_s: float = 15.0,
) -> AsyncIterator[str]:
    last: tuple[Any, ...] | None = None
    last_sent = time.monotonic()
    seq = 0
    while True:
        try:
            snap = await run_in_threadpool(_snapshot, sessions, job_id, owner)
        except Exception as exc:
            log.warning("event stream for job %s stopped: %s", job_id, exc)
            yield sse("error", {"detail": "the job could not be read; reconnect to resume"})
            return
        if snap is None:
            yield sse("error", {"detail": f"job {job_id!r} no longer exists"})
            return
        data = snap.model_dump(mode="json")
        if snap.status in TERMINAL:
            seq += 1
            yield sse("done", data, seq)
            return
        now = time.monotonic()
        if _key(snap) != last:
            seq += 1
            last, last_sent = _key(snap), now
            yield sse("job", data, seq)
        elif now - last_sent >= keepalive_s:
            last_sent = now
            yield ": keep-alive\n\n"
        await anyio.sleep(poll_s)
