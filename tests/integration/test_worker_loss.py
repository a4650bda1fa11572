"""A worker SIGKILLed mid-training: the reconciler finds the job once its lease expires, a new
worker takes it over and resumes from the last checkpoint, and the job ends with one set of
results.

The kill falls at a chosen point, by state: a trigger makes the worker's first progress write
after distill epoch `HELD_AFTER` (its checkpoint and metrics are written first) wait on an
advisory lock the test holds, so the worker stops there (the heartbeat still renewing its lease)
until it is killed. The reconciler's timing is checked against the lease the job had at the kill
(times the service recorded), never against the test's clock.

This module deploys a stack of its own (API, worker, reconciler on a queue of their own): the
kill needs a worker no other test uses."""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Connection, text

from store.blobs import BlobStore

DISTILL_EPOCHS = 30
TEACHER_EPOCHS = 2
HELD_AFTER = 2  # the worker is killed once this distill epoch is done, checkpointed, recorded
HOLD_KEY = 0x6B696C6C  # the advisory lock the held write waits on

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


@contextmanager
def held_progress(conn: Connection, job_id: str, after_epoch: int) -> Iterator[int]:
    """While inside, the job's progress writes wait on an advisory lock `conn` holds once its
    distill epoch `after_epoch` has metrics; yields `conn`'s backend pid.

    A statement-level trigger: it runs before the UPDATE locks the job's row, so the worker's
    heartbeats (UPDATEs that do not set current_epoch) go on and its lease stays alive."""
    assert re.fullmatch(r"[0-9a-f]+", job_id), job_id  # it goes into the function's body
    conn.execute(
        text(
            "CREATE FUNCTION it_hold_progress() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN "
            "IF current_query() ILIKE '%current_epoch%' AND EXISTS (SELECT 1 FROM metrics "
            f"WHERE job_id = '{job_id}' AND stage = 'distill' AND epoch >= {int(after_epoch)}) "
            f"THEN PERFORM pg_advisory_xact_lock_shared({HOLD_KEY}); END IF; RETURN NULL; END $$"
        )
    )
    conn.execute(
        text(
            "CREATE TRIGGER it_hold_progress BEFORE UPDATE ON jobs FOR EACH STATEMENT "
            "EXECUTE FUNCTION it_hold_progress()"
        )
    )
    conn.execute(text("SELECT pg_advisory_lock(:key)"), {"key": HOLD_KEY})
    conn.commit()
    try:
        yield int(conn.execute(text("SELECT pg_backend_pid()")).scalar_one())
    finally:
        conn.rollback()
        conn.execute(text("SELECT pg_advisory_unlock(:key)"), {"key": HOLD_KEY})
        conn.execute(text("DROP TRIGGER IF EXISTS it_hold_progress ON jobs"))
        conn.execute(text("DROP FUNCTION IF EXISTS it_hold_progress()"))
        conn.commit()


def lease_at(conn: Connection, job_id: str) -> datetime:
    at = conn.execute(
        text("SELECT lease_expires_at FROM jobs WHERE id = :id"), {"id": job_id}
    ).scalar_one()
    return at if at.tzinfo else at.replace(tzinfo=UTC)


def test_killed_worker_job_is_requeued_and_resumes_from_its_checkpoint(
    stacks: Any, locks: Any
) -> None:
    stack = stacks("loss")
    api = stack.start_api()
    job_id = api.submit(LONG)["id"]  # no worker yet: the message waits

    with locks.engine.connect() as conn:
        with held_progress(conn, job_id, HELD_AFTER) as holder:
            stack.start_reconciler(interval=1)
            first = stack.start_worker("w1")
            held = locks.wait_until_waiting(holder, "UPDATE jobs", first)
            first.kill()  # SIGKILL to the whole process group: the main process, its child
            locks.terminate(held)  # the dead worker's write never commits
        lease_expired_at = lease_at(conn, job_id)  # nothing renews it after the kill

    checkpoint = BlobStore(stack.data_dir / "blobs").named_path(f"checkpoints/{job_id}/distill")
    assert checkpoint.is_file()
    done_before_kill = max(epochs_done(api, job_id))
    assert done_before_kill == HELD_AFTER
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
    # Requeued only once the lease the job had at the kill ran out. While the worker lived, the
    # reconciler left the job alone: it was still attempt 1 at the kill (above).
    assert timestamp(requeued["at"]) >= lease_expired_at, (requeued["at"], lease_expired_at)
    assert [e["message"] for e in events if e["kind"] == "reconcile"] == [
        "worker lost; job re-enqueued"
    ]

    resumed = [e for e in events if e["kind"] == "stage" and "resumed" in e["message"]]
    assert len(resumed) == 1, [e["message"] for e in events]
    (resume,) = resumed
    from_epoch = resume["data"]["resumed_from_epoch"]
    assert resume["data"]["stage"] == "distill"
    assert resume["message"] == f"distill resumed from the epoch {from_epoch} checkpoint"
    # The checkpoint of the last epoch with metrics (both were written before the held write).
    assert from_epoch == done_before_kill, (from_epoch, done_before_kill)
    # Whatever GET showed during attempt 2 (however often the test got to ask): the
    # distillation went on from the checkpoint, never from epoch 1. (Until attempt 2 reports,
    # the row still shows attempt 1's last stage and epoch, `at_kill`: claiming a job does not
    # reset them.)
    second = [(j["stage"], j["current_epoch"]) for j in seen if j["attempts"] == 2]
    while second and second[0] == at_kill:
        second.pop(0)
    distill_epochs = [epoch for stage, epoch in second if stage == "distill" and epoch]
    assert all(epoch > from_epoch for epoch in distill_epochs), (from_epoch, second)

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
