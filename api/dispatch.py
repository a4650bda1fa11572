"""Hand a committed job to the broker, by task name only (store.queue; never the worker package).

The Job row is committed first, so a message can never name a job the worker cannot find. If
the broker is down, the job simply stays queued with no `enqueued_at`; the reconciler sends it
again later. The request still succeeds: the database, not the broker, is the source of truth.
"""

from __future__ import annotations

import logging

from celery import Celery
from sqlalchemy.orm import Session

from kdcore.spec import JobSpec
from store.jobs import add_event, mark_enqueued
from store.models import Job
from store.queue import enqueue
from store.settings import Settings

log = logging.getLogger("distillery.api")


def max_runtime(job: Job, settings: Settings) -> int:
    """The job's own soft time limit, never above the service's cap."""
    try:
        wanted = JobSpec.model_validate(job.spec).train.max_runtime_s
    except ValueError:
        wanted = settings.max_job_runtime_s
    return min(wanted, settings.max_job_runtime_s)


def send(session: Session, job: Job, celery: Celery, settings: Settings) -> bool:
    """Enqueue `job` (already committed); record the outcome and commit. True when sent."""
    try:
        enqueue(job.id, max_runtime(job, settings), app=celery)
    except Exception as exc:  # any broker failure: the reconciler re-enqueues later
        log.warning("could not enqueue job %s: %s", job.id, exc)
        add_event(
            session,
            job.id,
            "broker",
            f"could not reach the broker ({type(exc).__name__}: {exc}); the job stays queued "
            "and will be enqueued again automatically",
        )
        session.commit()
        session.refresh(job)
        return False
    mark_enqueued(session, job.id)
    session.commit()
    session.refresh(job)
    return True
