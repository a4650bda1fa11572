"""`execute_job` in-process against real PostgreSQL: a job runs once, its results are written
once, and a job someone else holds, or one already finished, is left alone."""

from __future__ import annotations

import hashlib
import io
from collections.abc import Callable
from datetime import timedelta
from typing import Any

import numpy as np
import pytest
from celery.exceptions import SoftTimeLimitExceeded

from kdcore.callbacks import Callbacks, EpochRecord
from store.blobs import BlobStore
from store.models import Artifact, Evaluation, JobEvent, JobStatus, Metric, utcnow
from worker.runner import SKIPPED, Outcome

RunJob = Callable[..., Outcome]
Spec = Callable[..., dict[str, Any]]


def sha256_of(path: Any) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_job_runs_to_success_and_records_everything(
    jobs: Any, run_job: RunJob, blobs: BlobStore
) -> None:
    job_id = jobs.make()
    outcome = run_job(job_id)
    assert outcome.status == JobStatus.succeeded, outcome

    job = jobs.get(job_id)
    assert (job.status, job.attempts, job.progress, job.error_code) == ("succeeded", 1, 1.0, None)
    assert job.lease_expires_at is None and job.finished_at is not None

    artifacts = {a.format: a for a in jobs.rows(Artifact, job_id)}
    assert set(artifacts) == {"onnx", "safetensors", "config"}
    assert artifacts["onnx"].filename == "student.onnx"
    assert artifacts["config"].filename == "student.json"
    for a in artifacts.values():
        path = blobs.path(a.storage_key)
        assert sha256_of(path) == a.sha256 == a.storage_key
        assert path.stat().st_size == a.size_bytes

    (ev,) = jobs.rows(Evaluation, job_id)
    report = ev.report
    assert ev.teacher_accuracy == report["teacher"]["accuracy"]
    assert ev.student_accuracy == report["student"]["accuracy"]
    assert ev.baseline_accuracy is None and report["baseline"] is None
    assert ev.gap == report["gap"]
    assert (ev.teacher_params, ev.student_params) == (
        report["teacher"]["params"],
        report["student"]["params"],
    )
    assert ev.compression_ratio == report["compression"]
    assert ev.teacher_latency_ms == report["teacher"]["latency_ms"]
    assert ev.student_latency_ms == report["student"]["latency_ms"]
    assert ev.student_size_bytes == report["student"]["size_bytes"]
    assert ev.gate_passed is True and ev.gates == report["gates"]
    # The stored report names files and the submitted spec, never the worker's temp folder.
    assert "/tmp" not in str(report) and "distillery-" not in str(report["artifacts"])
    assert {a["filename"] for a in report["artifacts"]} == {"student.onnx", "student.safetensors"}
    assert {a["sha256"] for a in report["artifacts"]} == {
        artifacts["onnx"].sha256,
        artifacts["safetensors"].sha256,
    }

    metrics = jobs.rows(Metric, job_id)
    seen = {(m.stage, m.epoch, m.name) for m in metrics}
    assert seen == {
        (stage, epoch, name)
        for stage in ("teacher", "distill")
        for epoch in (1, 2)
        for name in ("train_loss", "student_accuracy", "lr")
    }
    history = {(r["epoch"], round(r["student_accuracy"], 6)) for r in report["history"]}
    distill_acc = {
        (m.epoch, round(m.value, 6))
        for m in metrics
        if m.stage == "distill" and m.name == "student_accuracy"
    }
    assert distill_acc == history

    events = jobs.rows(JobEvent, job_id)
    statuses = [e.status for e in events if e.kind == "status"]
    assert statuses == ["queued", "running", "succeeded"]
    stage_messages = [e.message for e in events if e.kind == "stage"]
    for stage in ("teacher", "distill", "evaluate", "export"):
        assert f"{stage} started" in stage_messages and f"{stage} finished" in stage_messages
    assert not any(e.kind == "gate" for e in events)
    # Checkpoints are dropped once the job has succeeded.
    assert not blobs.named_path(f"checkpoints/{job_id}").exists()

    # A second delivery of the same message changes nothing.
    again = run_job(job_id, worker="another-worker")
    assert again.status == SKIPPED
    job2 = jobs.get(job_id)
    assert (job2.status, job2.attempts, job2.worker) == ("succeeded", 1, job.worker)
    assert len(jobs.rows(Artifact, job_id)) == 3
    assert len(jobs.rows(JobEvent, job_id)) == len(events)


def test_job_held_by_a_live_worker_is_not_run(jobs: Any, run_job: RunJob) -> None:
    lease = utcnow() + timedelta(seconds=60)
    job_id = jobs.make(status="running", attempts=1, worker="other", lease_expires_at=lease)
    assert run_job(job_id).status == SKIPPED
    job = jobs.get(job_id)
    assert (job.status, job.attempts, job.worker) == ("running", 1, "other")
    assert jobs.rows(Artifact, job_id) == []


def test_missing_job_is_a_no_op(run_job: RunJob) -> None:
    assert run_job("0" * 32).status == SKIPPED


def test_too_many_attempts_fail_the_job(jobs: Any, run_job: RunJob, settings: Any) -> None:
    job_id = jobs.make(attempts=settings.max_attempts)
    outcome = run_job(job_id)
    assert (outcome.status, outcome.error_code) == ("failed", "too_many_attempts")
    job = jobs.get(job_id)
    assert (job.status, job.error_code, job.attempts) == (
        "failed",
        "too_many_attempts",
        settings.max_attempts + 1,
    )


def npz_bytes(**arrays: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    return buf.getvalue()


def test_uploaded_dataset_and_a_failed_gate(jobs: Any, run_job: RunJob, tiny: Spec) -> None:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(60, 6)).astype(np.float32)
    y = (x[:, 0] > 0).astype(np.int64)
    upload = jobs.upload(npz_bytes(x_train=x, y_train=y), "my data (v2).npz")
    spec = tiny(
        data={"source": f"upload:{upload}"},
        gates={"min_student_accuracy": 100.0, "max_gap": -50.0},
    )
    job_id = jobs.make(spec)
    outcome = run_job(job_id)
    assert outcome.status == JobStatus.succeeded, outcome
    (ev,) = jobs.rows(Evaluation, job_id)
    assert ev.gate_passed is False
    assert ev.report["spec"]["data"]["source"] == f"upload:{upload}"
    assert ev.report["data"]["n_train"] + ev.report["data"]["n_val"] == 60
    events = jobs.rows(JobEvent, job_id)
    gate = [e for e in events if e.kind == "gate"]
    assert len(gate) == 1 and gate[0].message == "gate failed"
    assert gate[0].data["passed"] is False
    assert "quality gate failed" in events[-1].message and events[-1].status == "succeeded"


@pytest.mark.parametrize(
    ("source", "expect"),
    [
        ("bad", "not a readable .npz archive"),
        ("missing", "does not exist"),
        ("/etc/hostname.csv", "is not an upload"),
    ],
)
def test_invalid_input_fails_with_the_field(
    jobs: Any, run_job: RunJob, tiny: Spec, source: str, expect: str
) -> None:
    if source == "bad":
        upload = jobs.upload(b"this is not a zip archive", "train.npz")
        source = f"upload:{upload}"
    elif source == "missing":
        source = "upload:doesnotexist"
    job_id = jobs.make(tiny(data={"source": source}))
    outcome = run_job(job_id)
    assert (outcome.status, outcome.error_code) == ("failed", "invalid_input")
    job = jobs.get(job_id)
    assert (job.status, job.error_code) == ("failed", "invalid_input")
    assert job.error_message.startswith("data.source: ")
    assert expect in job.error_message
    assert "distillery-" not in job.error_message  # no worker temp paths
    if source.startswith("upload:") and expect != "does not exist":
        assert f"{source} (train.npz)" in job.error_message


class RaiseAt(Callbacks):
    """Raise `exc` at the end of an epoch of a stage: a crash, a time limit."""

    def __init__(self, stage: str, epoch: int, exc: BaseException):
        self.stage, self.epoch, self.exc = stage, epoch, exc

    def on_epoch_end(self, record: EpochRecord) -> None:
        if (record.stage, record.epoch) == (self.stage, self.epoch):
            raise self.exc


def test_soft_time_limit_fails_the_job_as_timeout(
    jobs: Any, run_job: RunJob, blobs: BlobStore
) -> None:
    job_id = jobs.make()
    outcome = run_job(job_id, callbacks=RaiseAt("distill", 1, SoftTimeLimitExceeded()))
    assert (outcome.status, outcome.error_code) == ("failed", "timeout")
    job = jobs.get(job_id)
    assert (job.status, job.error_code, job.lease_expires_at) == ("failed", "timeout", None)
    assert jobs.rows(Artifact, job_id) == [] and jobs.rows(Evaluation, job_id) == []
    # Checkpoints stay after a failure, so a retry resumes.
    assert blobs.named_path(f"checkpoints/{job_id}/distill").exists()


def test_unexpected_error_is_an_internal_error(jobs: Any, run_job: RunJob) -> None:
    job_id = jobs.make()
    outcome = run_job(job_id, callbacks=RaiseAt("teacher", 1, ZeroDivisionError("boom")))
    assert (outcome.status, outcome.error_code) == ("failed", "internal_error")
    job = jobs.get(job_id)
    assert job.status == "failed" and job.error_message == "ZeroDivisionError: boom"


def test_gpu_out_of_memory_names_the_fix(jobs: Any, run_job: RunJob) -> None:
    import torch

    oom = torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
    outcome = run_job(jobs.make(), callbacks=RaiseAt("distill", 1, oom))
    assert (outcome.status, outcome.error_code) == ("failed", "out_of_memory")
    assert "train.batch_size" in outcome.message
