"""A lost attempt is taken over and resumes from its checkpoint (same final weights as an
uninterrupted run); a cancel request stops a running job at a batch boundary; a worker that lost
its claim stops and writes nothing.

No test here races the job: the cancel (or the takeover) happens inside a callback at a chosen
epoch end, and every step after it outlasts the lease's poll period, so the check before the next
step reads the job's row (worker/lease.py). How fast a cancel is seen is a speed figure, not a
test."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import safetensors.torch
import torch

from kdcore.callbacks import Callbacks, EpochRecord
from store.blobs import BlobStore
from store.db import session_scope
from store.jobs import request_cancel
from store.models import Artifact, Job, JobEvent, Metric
from worker.lease import POLL_SECONDS
from worker.runner import Outcome

RunJob = Callable[..., Outcome]
Spec = Callable[..., dict[str, Any]]


class Crash(BaseException):
    """Stands for the worker process dying: nothing in the worker catches it."""


class Steps(Callbacks):
    """Counts training steps per stage; optionally crashes after an epoch of a stage."""

    def __init__(self, crash_after: tuple[str, int] | None = None):
        self.crash_after = crash_after
        self.steps: dict[str, int] = {}

    def on_step(self, stage: str, epoch: int, step: int, loss: float) -> None:
        if stage in ("teacher", "baseline", "distill"):
            self.steps[stage] = self.steps.get(stage, 0) + 1

    def on_epoch_end(self, record: EpochRecord) -> None:
        if (record.stage, record.epoch) == self.crash_after:
            raise Crash


def student_weights(jobs: Any, blobs: BlobStore, job_id: str) -> dict[str, torch.Tensor]:
    (a,) = [a for a in jobs.rows(Artifact, job_id) if a.format == "safetensors"]
    return safetensors.torch.load_file(str(blobs.path(a.storage_key)))


def test_expired_lease_is_taken_over_and_resumes_from_the_checkpoint(
    jobs: Any, run_job: RunJob, blobs: BlobStore, tiny: Spec
) -> None:
    spec = tiny(train={"epochs": 3, "batch_size": 16})  # 64 rows: 4 steps per epoch
    job_id = jobs.make(spec)

    first = Steps(crash_after=("distill", 1))
    try:
        run_job(job_id, worker="w1", callbacks=first)
    except Crash:
        pass
    else:
        raise AssertionError("the crash hook did not fire")
    assert first.steps == {"teacher": 2, "distill": 4}  # the teacher: batch 128, one step
    job = jobs.get(job_id)
    assert (job.status, job.attempts, job.worker) == ("running", 1, "w1")
    assert blobs.named_path(f"checkpoints/{job_id}/distill").exists()

    # While the lease holds, another delivery does nothing.
    assert run_job(job_id, worker="w2").status == "skipped"

    jobs.expire_lease(job_id)
    second = Steps()
    outcome = run_job(job_id, worker="w2", callbacks=second)
    assert (outcome.status, outcome.attempt) == ("succeeded", 2)
    # The teacher was done and the first distill epoch too: only epochs 2 and 3 train.
    assert second.steps == {"distill": 8}
    job = jobs.get(job_id)
    assert (job.status, job.attempts, job.worker) == ("succeeded", 2, "w2")
    assert [a.format for a in jobs.rows(Artifact, job_id)].count("safetensors") == 1
    resumed = [e for e in jobs.rows(JobEvent, job_id) if "resumed" in e.message]
    assert [e.data["resumed_from_epoch"] for e in resumed] == [1]
    epochs = {m.epoch for m in jobs.rows(Metric, job_id) if m.stage == "distill"}
    assert epochs == {1, 2, 3}  # the first attempt's epoch is kept, not duplicated

    straight = jobs.make(spec)
    assert run_job(straight).status == "succeeded"
    resumed_w, straight_w = (
        student_weights(jobs, blobs, job_id),
        student_weights(jobs, blobs, straight),
    )
    assert resumed_w.keys() == straight_w.keys()
    for key in resumed_w:
        assert torch.equal(resumed_w[key], straight_w[key]), key


class AfterEpoch(Callbacks):
    """At the end of distill epoch `epoch`, calls `act` (which changes the job's row as another
    process would, in a session of its own); from then on every step outlasts the lease's poll
    period, so the check before the next step reads the row whatever the machine's speed."""

    def __init__(self, epoch: int, act: Callable[[], None]):
        self.epoch, self.act = epoch, act
        self.acted = False

    def on_epoch_end(self, record: EpochRecord) -> None:
        if (record.stage, record.epoch) == ("distill", self.epoch):
            self.act()
            self.acted = True

    def on_step(self, stage: str, epoch: int, step: int, loss: float) -> None:
        if self.acted:
            time.sleep(POLL_SECONDS + 0.05)  # at least this long: the next check polls


def test_cancel_while_running_ends_cancelled(
    jobs: Any, run_job: RunJob, engine: Any, tiny: Spec, blobs: BlobStore
) -> None:
    spec = tiny(
        teacher={"arch": "mlp", "kwargs": {"hidden": [16]}, "train": {"epochs": 1}},
        train={"epochs": 30, "batch_size": 8},  # 8 steps per epoch
    )
    job_id = jobs.make(spec)

    def cancel() -> None:
        with session_scope(engine) as s:
            request_cancel(s, s.get(Job, job_id))

    outcome = run_job(job_id, callbacks=AfterEpoch(2, cancel))

    assert outcome.status == "cancelled"
    job = jobs.get(job_id)
    assert (job.status, job.lease_expires_at) == ("cancelled", None)
    statuses = [e.status for e in jobs.rows(JobEvent, job_id) if e.kind == "status"]
    assert statuses == ["queued", "running", "cancelling", "cancelled"]
    # Stopped at the first check that read the row, within epoch 3, which never ended.
    epochs = {m.epoch for m in jobs.rows(Metric, job_id) if m.stage == "distill"}
    assert epochs == {1, 2}
    assert jobs.rows(Artifact, job_id) == []
    assert blobs.named_path(f"checkpoints/{job_id}/distill").exists()  # a retry resumes


def test_a_worker_that_lost_its_claim_stops_and_writes_nothing(
    jobs: Any, run_job: RunJob, tiny: Spec
) -> None:
    job_id = jobs.make(tiny(train={"epochs": 20, "batch_size": 16}))  # 4 steps per epoch

    def take_over() -> None:  # as the reconciler and a second worker would after a long stall
        jobs.set(job_id, attempts=Job.attempts + 1, worker="usurper")

    outcome = run_job(job_id, callbacks=AfterEpoch(1, take_over))
    assert outcome.status == "lost"
    job = jobs.get(job_id)
    assert (job.status, job.attempts, job.worker) == ("running", 2, "usurper")
    assert jobs.rows(Artifact, job_id) == []
    epochs = {m.epoch for m in jobs.rows(Metric, job_id) if m.stage == "distill"}
    assert epochs == {1}  # stopped within epoch 2, before it wrote anything
