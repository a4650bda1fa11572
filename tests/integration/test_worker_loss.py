"""A worker SIGKILLed mid-epoch: the reconciler finds the job once its lease expires, a new worker
takes it over and resumes from the last checkpoint, and the job ends with one set of results.

This module deploys a stack of its own (API, worker, reconciler on a queue of their own): the
kill needs a worker no other test uses."""

from __future__ import annotations

from collections import Counter
from datetime import UTC, datetime
from typing import Any

from store.blobs import BlobStore

DISTILL_EPOCHS = 30
TEACHER_EPOCHS = 2

# About 0.3 s per distillation epoch on 2 CPU cores (360 steps of 4 rows), ~10 s in all: long
# enough to be killed mid-training, short enough for the second attempt to finish quickly.
LONG: dict[str, Any] = {
    "name": "it-worker-loss",
    "teacher": {
        "arch": "mlp",
        "kwargs": {"hidden": [32]},
        "train": {"epochs": TEACHER_EPOCHS, "batch_size": 64},
    },
    "student": {"arch": "mlp", "kwargs": {"hidden": [16]}},
    "data": {"source": "digits", "val_fraction": 0.2},
    "method": {"name": "kd"},
    "train": {"epochs": DISTILL_EPOCHS, "batch_size": 4, "seed": 0},
    "evaluate": {"latency_runs": 2},
    "export": ["torchscript", "onnx", "safetensors"],
}


def epochs_done(api: Any, job_id: str, stage: str = "distill") -> list[int]:
    """Epochs of `stage` with metrics, i.e. finished and checkpointed (the checkpoint is written
    before the epoch's metrics)."""
    return [int(e) for e, _ in api.metrics(job_id).get(stage, {}).get("train_loss", [])]


def timestamp(value: str) -> datetime:
    at = datetime.fromisoformat(value)
    return at if at.tzinfo else at.replace(tzinfo=UTC)  # the service's times are UTC


def test_killed_worker_job_is_requeued_and_resumes_from_its_checkpoint(stacks: Any) -> None:
    stack = stacks("loss")
    api = stack.start_api()
    first = stack.start_worker("w1")
    stack.start_reconciler(interval=1)

    job_id = api.submit(LONG)["id"]
    checkpoint = BlobStore(stack.data_dir / "blobs").named_path(f"checkpoints/{job_id}/distill")

    # Mid-distillation: epoch 2 is finished and checkpointed, many epochs remain.
    job = api.wait(
        job_id,
        lambda j: (
            j["stage"] == "distill"
            and (j["current_epoch"] or 0) >= 2
            and max(epochs_done(api, job_id), default=0) >= 2
        ),
        timeout=90,
        what="distill epoch 2 done",
        poll_s=0.1,
    )
    assert checkpoint.is_file()
    first.kill()  # SIGKILL to the whole process group: the main process and its pool child
    killed_at = datetime.now(UTC)

    done_before_kill = max(epochs_done(api, job_id))
    assert 2 <= done_before_kill < DISTILL_EPOCHS - 5, "the kill came too late to test a resume"
    job = api.job(job_id)
    # Nobody told the database: the job looks running until its lease expires.
    assert (job["status"], job["attempts"]) == ("running", 1), job
    at_kill = (job["stage"], job["current_epoch"])

    stack.start_worker("w2")

    # Watch the takeover: requeued by the reconciler, then claimed again.
    seen: list[dict[str, Any]] = []

    def record(j: dict[str, Any]) -> bool:
        seen.append(j)
        return j["status"] == "succeeded"

    job = api.wait(job_id, record, timeout=120, what="success after the takeover", poll_s=0.25)

    assert job["attempts"] == 2, job
    assert job["progress"] == 1.0 and job["error_code"] is None

    # The event log tells the story.
    events = api.events(job_id)
    changes = [e for e in events if e["kind"] == "status"]
    statuses = [e["status"] for e in changes]
    assert statuses == ["queued", "running", "queued", "running", "succeeded"], statuses
    _, run1, requeued, run2, _ = changes
    assert (run1["data"]["attempt"], run2["data"]["attempt"]) == (1, 2)
    assert run1["data"]["worker"].startswith("w1@")
    assert run2["data"]["worker"].startswith("w2@")
    assert "lost" in requeued["message"], requeued
    # Requeued when the lease ran out (6 s after the last heartbeat, which came about a second
    # before the kill; the margin allows for a heartbeat delayed by load), and soon after it
    # (the reconciler runs every second). While the worker lived, the reconciler left the job
    # alone: it was still attempt 1 at the kill (above).
    requeued_after = (timestamp(requeued["at"]) - killed_at).total_seconds()
    assert 2 < requeued_after < 20, requeued_after
    assert [e["message"] for e in events if e["kind"] == "reconcile"] == [
        "worker lost; job re-enqueued"
    ]

    resumed = [e for e in events if e["kind"] == "stage" and "resumed" in e["message"]]
    assert len(resumed) == 1, [e["message"] for e in events]
    (resume,) = resumed
    from_epoch = resume["data"]["resumed_from_epoch"]
    assert resume["data"]["stage"] == "distill"
    assert resume["message"] == f"distill resumed from the epoch {from_epoch} checkpoint"
    # The checkpoint of the last epoch with metrics, or of the one after it when the kill fell
    # between writing a checkpoint and writing that epoch's metrics.
    assert done_before_kill <= from_epoch <= done_before_kill + 1, (from_epoch, done_before_kill)
    # What GET showed during attempt 2: the distillation went on from the checkpoint, never
    # from epoch 1. (Until attempt 2 reports, the row still shows attempt 1's last stage and
    # epoch, `at_kill`: claiming a job does not reset them.)
    second = [(j["stage"], j["current_epoch"]) for j in seen if j["attempts"] == 2]
    while second and second[0] == at_kill:
        second.pop(0)
    distill_epochs = [epoch for stage, epoch in second if stage == "distill" and epoch]
    assert distill_epochs and min(distill_epochs) > from_epoch, (from_epoch, second)

    # The teacher, finished before the kill, was not trained again.
    finished = [e["data"] for e in events if e["message"] == "teacher finished"]
    assert finished[-1].get("resumed_from_epoch") == TEACHER_EPOCHS, finished

    # One result: every epoch's metrics once, one artifact per format, a full history.
    series = api.metrics(job_id)
    assert [e for e, _ in series["distill"]["train_loss"]] == list(range(1, DISTILL_EPOCHS + 1))
    assert [e for e, _ in series["teacher"]["train_loss"]] == list(range(1, TEACHER_EPOCHS + 1))
    formats = Counter(a["format"] for a in job["artifacts"])
    assert formats == {"torchscript": 1, "onnx": 1, "safetensors": 1, "config": 1}, formats
    listed = api.http.get(f"/v1/jobs/{job_id}/artifacts").json()
    assert sorted(a["format"] for a in listed) == sorted(formats)
    report = api.http.get(f"/v1/jobs/{job_id}/report").json()["report"]
    assert [r["epoch"] for r in report["history"]] == list(range(1, DISTILL_EPOCHS + 1))
    assert job["evaluation"]["student_accuracy"] > 50
    assert not checkpoint.exists()  # cleared once the results were written
    assert not first.alive()
