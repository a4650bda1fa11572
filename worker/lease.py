"""A worker's hold on a claimed job: the heartbeat that renews it and the flags training polls.

The lease is renewed from a thread with its own database session, so a long batch never lets it
lapse. The training loop polls `should_stop()` at every batch boundary: it turns True when the
user asked to cancel (the job is `cancelling`) or when the claim is lost (the lease expired and
another attempt took over, or the job was ended elsewhere). A lost worker stops and writes
nothing more; the attempt that holds the job now owns it.
"""

from __future__ import annotations

import logging
import threading
import time

from celery.exceptions import SoftTimeLimitExceeded
from sqlalchemy import Engine, select

from store.db import session_scope
from store.jobs import ACTIVE, Claim, heartbeat
from store.models import Job, JobStatus
from store.settings import Settings

log = logging.getLogger(__name__)

POLL_SECONDS = 0.5


class Lease:
    """Heartbeat thread plus cancel/lost flags for one claimed attempt."""

    def __init__(
        self, engine: Engine, claim: Claim, settings: Settings, poll_seconds: float = POLL_SECONDS
    ):
        self.engine = engine
        self.claim = claim
        self.lease_seconds = settings.lease_seconds
        self.heartbeat_seconds = settings.heartbeat_seconds
        self.poll_seconds = poll_seconds
        self._lost = threading.Event()
        self._cancel = threading.Event()
        self._stop = threading.Event()
        self._last_poll = 0.0
        self._thread = threading.Thread(
            target=self._beat, name=f"heartbeat-{claim.job_id}", daemon=True
        )

    # --- lifecycle ---------------------------------------------------------------------------

    def start(self) -> Lease:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=self.heartbeat_seconds + 10)

    def __enter__(self) -> Lease:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # --- what the training loop asks ---------------------------------------------------------

    @property
    def lost(self) -> bool:
        return self._lost.is_set()

    @property
    def cancel_requested(self) -> bool:
        return self._cancel.is_set()

    def should_stop(self) -> bool:
        """True once cancel was requested or the claim is lost; reads the job row at most every
        `poll_seconds` so a cancel is seen within a second, not a heartbeat period."""
        if not (self._lost.is_set() or self._cancel.is_set()):
            now = time.monotonic()
            if now - self._last_poll >= self.poll_seconds:
                self._last_poll = now
                self._poll()
        return self._lost.is_set() or self._cancel.is_set()

    # --- internals ---------------------------------------------------------------------------

    def _observe(self, status: str | None) -> None:
        if status is None or status not in ACTIVE:
            if not self._lost.is_set():
                log.warning("job %s attempt %d: claim lost", self.claim.job_id, self.claim.attempt)
            self._lost.set()
        elif status == JobStatus.cancelling:
            self._cancel.set()

    def _poll(self) -> None:
        try:
            with session_scope(self.engine) as s:
                row = s.execute(
                    select(Job.status, Job.attempts).where(Job.id == self.claim.job_id)
                ).one_or_none()
        except SoftTimeLimitExceeded:
            raise
        except Exception:  # a database blip must not kill the job; the next poll retries
            log.warning("job %s: status poll failed", self.claim.job_id, exc_info=True)
            return
        if row is None or row.attempts != self.claim.attempt:
            self._observe(None)
        else:
            self._observe(row.status)

    def _beat(self) -> None:
        while not self._stop.wait(self.heartbeat_seconds):
            try:
                with session_scope(self.engine) as s:
                    status = heartbeat(s, self.claim, self.lease_seconds)
            except Exception:  # keep trying: the lease outlasts several missed beats
                log.warning("job %s: heartbeat failed", self.claim.job_id, exc_info=True)
                continue
            if self._stop.is_set():  # the attempt is ending; its own finish decides
                return
            self._observe(status)
            if self._lost.is_set():
                return
