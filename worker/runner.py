"""The bridge from a Job row to `kdcore.pipeline.run`: claim, run, record, finish.

`execute_job` is what the Celery task calls and what tests call in-process. Delivery is at least
once, so it is safe to call any number of times for the same job:

- it runs only if `store.jobs.claim` hands it the job (queued, or running with an expired
  lease); a duplicate message, a finished job or a job another live worker holds is a no-op;
- training checkpoints every epoch into the blob store (`checkpoints/<job>/<stage>`), so an
  attempt that takes over a lost one resumes from the last finished epoch and ends with the
  weights an uninterrupted run would have;
- results are written in one transaction by the fenced `store.jobs.finish`: if this attempt
  lost its claim meanwhile nothing is written, so artifacts and the evaluation exist once;
- the job-end webhook (if the spec asks for one) is queued in that transaction and sent after
  it commits (worker/webhooks.py), so a slow or failing receiver never holds the job back.

Whenever this function returns normally, the attempt it claimed has ended (succeeded, failed
or cancelled) or has been taken over by another attempt; it never leaves a job `running`.
"""

from __future__ import annotations

import logging
import shutil
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from celery.exceptions import SoftTimeLimitExceeded
from sqlalchemy import Engine, delete

from kdcore.callbacks import Callbacks
from kdcore.errors import Cancelled, InputError
from kdcore.pipeline import run as run_pipeline
from kdcore.report import Report
from kdcore.spec import SpecError
from kdcore.validation import parse_spec
from store.blobs import BlobStore
from store.db import session_scope
from store.jobs import Claim, add_event, claim, finish
from store.models import TERMINAL, Artifact, Evaluation, Job, JobStatus
from store.settings import Settings
from worker.checkpoints import BlobCheckpoints
from worker.inputs import localize_files, public_message
from worker.lease import Lease
from worker.progress import JobCallbacks
from worker.results import store_artifacts
from worker.webhooks import deliver_for_job

log = logging.getLogger(__name__)

SKIPPED = "skipped"  # not claimable: nothing was done
LOST = "lost"  # the claim was lost mid-run: another attempt owns the job now


@dataclass
class Outcome:
    """What one call did; `status` is the job's final status, or `skipped` / `lost`."""

    job_id: str
    status: str
    attempt: int | None = None
    error_code: str | None = None
    message: str = ""

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def execute_job(
    job_id: str,
    settings: Settings,
    engine: Engine,
    blobs: BlobStore,
    worker_name: str,
    *,
    callbacks: Callbacks | None = None,
) -> Outcome:
    """Claim job `job_id` and run it to a terminal state; `callbacks` (tests, embedding) are
    called after the service's own."""
    with session_scope(engine) as s:
        c = claim(s, job_id, worker_name, settings.lease_seconds)
    if c is None:
        log.info("job %s: not claimable (finished, missing, or held by a live worker)", job_id)
        return Outcome(job_id, SKIPPED, message="not claimable")
    log.info("job %s: claimed by %s (attempt %d)", job_id, worker_name, c.attempt)
    if c.since_retry > settings.max_attempts:
        ended = _end(
            engine,
            c,
            JobStatus.failed,
            f"gave up after {c.since_retry - 1} attempts (max_attempts={settings.max_attempts}); "
            "the worker running it was lost each time",
            "too_many_attempts",
        )
        return _notified(ended, engine, settings)
    workdir = Path(tempfile.mkdtemp(prefix=f"distillery-{job_id}-"))
    try:
        with Lease(engine, c, settings) as lease:
            outcome = _run_claimed(c, engine, blobs, workdir, lease, callbacks, settings)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    return _notified(outcome, engine, settings)


def _notified(outcome: Outcome, engine: Engine, settings: Settings) -> Outcome:
    """Send the job-end webhook once the end is committed (it never changes the outcome)."""
    if outcome.status in TERMINAL:
        deliver_for_job(engine, settings, outcome.job_id)
    return outcome


def _run_claimed(
    c: Claim,
    engine: Engine,
    blobs: BlobStore,
    workdir: Path,
    lease: Lease,
    extra: Callbacks | None,
    settings: Settings,
) -> Outcome:
    names: dict[str, str] = {}
    try:
        with session_scope(engine) as s:
            job = s.get(Job, c.job_id)
            if job is None:
                raise RuntimeError("the job row disappeared after it was claimed")
            submitted = job.spec
            limits = settings.limits_for(job.owner)  # the project's budget (kdcore/budget.py)
            spec = parse_spec(submitted, limits)
            local_spec, names = localize_files(s, spec, blobs, workdir, job.owner)
        checkpoints = BlobCheckpoints(blobs, c.job_id)
        report = run_pipeline(
            local_spec,
            workdir / "out",
            callbacks=JobCallbacks(engine, c, spec, lease, extra),
            checkpoints=checkpoints,
            limits=limits,
        )
        if lease.lost:
            return Outcome(c.job_id, LOST, c.attempt, message="claim lost before finishing")
        return _succeed(c, engine, blobs, report, submitted, checkpoints)
    except Cancelled:
        if lease.lost:
            log.warning("job %s attempt %d: stopped, claim lost", c.job_id, c.attempt)
            return Outcome(c.job_id, LOST, c.attempt, message="claim lost; stopped")
        return _end(engine, c, JobStatus.cancelled, "cancelled at the user's request")
    except SpecError as exc:
        return _end(engine, c, JobStatus.failed, str(exc), "invalid_input")
    except InputError as exc:
        message = public_message(f"{exc.field}: {exc.message}", names)
        return _end(engine, c, JobStatus.failed, message, "invalid_input")
    except SoftTimeLimitExceeded:
        return _end(
            engine,
            c,
            JobStatus.failed,
            "the job ran past its time limit (train.max_runtime_s); it was stopped",
            "timeout",
        )
    except torch.cuda.OutOfMemoryError:
        return _end(
            engine,
            c,
            JobStatus.failed,
            "the GPU ran out of memory; lower train.batch_size or use a smaller model",
            "out_of_memory",
        )
    except Exception as exc:
        log.exception("job %s attempt %d failed", c.job_id, c.attempt)
        message = public_message(f"{type(exc).__name__}: {exc}", names)
        return _end(engine, c, JobStatus.failed, message, "internal_error")


def _succeed(
    c: Claim,
    engine: Engine,
    blobs: BlobStore,
    report: Report,
    submitted_spec: dict[str, Any],
    checkpoints: BlobCheckpoints,
) -> Outcome:
    """Store the files, then write every row of the result in one fenced transaction."""
    artifacts = store_artifacts(blobs, c.job_id, report)
    stored = report.stored(submitted_spec)
    message = stored.evaluation.summary()
    with session_scope(engine) as s:
        # Nothing to remove in any legal history (only a success writes these, and success is
        # final); done so (job, format) stays unique even if a row was left behind by hand.
        s.execute(delete(Artifact).where(Artifact.job_id == c.job_id))
        s.execute(delete(Evaluation).where(Evaluation.job_id == c.job_id))
        if not stored.gates["passed"]:
            add_event(s, c.job_id, "gate", "gate failed", data=dict(stored.gates))
        done = finish(
            s,
            c,
            JobStatus.succeeded,
            message,
            artifacts=artifacts,
            evaluation=Evaluation.of(c.job_id, stored),
        )
        if not done:
            s.rollback()
    if not done:
        log.warning("job %s attempt %d: finished but the claim was lost", c.job_id, c.attempt)
        return Outcome(c.job_id, LOST, c.attempt, message="claim lost; results not written")
    checkpoints.clear()
    log.info("job %s attempt %d: succeeded; %s", c.job_id, c.attempt, message)
    return Outcome(c.job_id, JobStatus.succeeded, c.attempt, message=message)


def _end(
    engine: Engine, c: Claim, status: JobStatus, message: str, error_code: str | None = None
) -> Outcome:
    """Finish the attempt without results; checkpoints stay so a retry resumes."""
    with session_scope(engine) as s:
        done = finish(s, c, status, message, error_code=error_code)
    if not done:
        log.warning("job %s attempt %d: claim lost before it could end", c.job_id, c.attempt)
        return Outcome(c.job_id, LOST, c.attempt, error_code, message)
    log.info("job %s attempt %d: %s %s", c.job_id, c.attempt, status, message)
    return Outcome(c.job_id, status, c.attempt, error_code, message)
