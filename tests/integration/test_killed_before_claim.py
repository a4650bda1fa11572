"""A worker killed after its job's message was delivered and before it claimed the job (issue #11,
item 1): the message is left in Redis's `unacked` hash, which kombu would give back only after
the visibility timeout (a day); the reconciler must enqueue the job again once the delivery is
older than the requeue age, and another worker runs it.

The kill has to fall between delivery and claim. The test makes that window as long as it needs:
it holds a lock on the job's row, so the worker's claim (an UPDATE of that row) waits; it kills
the worker once PostgreSQL shows that claim waiting on the test's lock, then releases the lock.

This module deploys a stack of its own: it kills a worker no other test uses."""

from __future__ import annotations

import json
from typing import Any

import redis
from sqlalchemy import text

from worker.reconciler import job_id_of

REQUEUE_AFTER_S = 5  # the reconciler's requeue age here (the stack's default is 30 s)


def messages(redis_url: str, queue: str, job_id: str) -> tuple[int, int]:
    """The job's messages (waiting on `queue`, delivered and unacknowledged)."""
    client = redis.Redis.from_url(redis_url)
    try:
        waiting = [json.loads(raw) for raw in client.lrange(queue, 0, -1)]
        unacked = [json.loads(raw)[0] for raw in client.hvals("unacked")]
    finally:
        client.close()
    return (
        sum(job_id_of(m) == job_id for m in waiting),
        sum(job_id_of(m) == job_id for m in unacked),
    )


def test_job_whose_worker_died_between_delivery_and_claim_is_enqueued_again(
    stacks: Any, locks: Any, tiny_job: dict[str, Any]
) -> None:
    stack = stacks("unclaimed")
    api = stack.start_api()
    job_id = api.submit(tiny_job)["id"]  # no worker yet: the message waits on the queue
    assert messages(stack.redis_url, stack.queue, job_id) == (1, 0)

    with locks.engine.connect() as lock:
        holder = int(lock.execute(text("SELECT pg_backend_pid()")).scalar_one())
        lock.execute(text("SELECT id FROM jobs WHERE id = :id FOR UPDATE"), {"id": job_id})
        first = stack.start_worker("w1")
        claim = locks.wait_until_waiting(holder, "UPDATE jobs", first)
        assert messages(stack.redis_url, stack.queue, job_id) == (0, 1)  # delivered
        first.kill()  # SIGKILL to its process group: the main process and the pool child
        locks.terminate(claim)  # the dead child's claim never commits
        lock.rollback()

    job = api.job(job_id)
    assert (job["status"], job["attempts"]) == ("queued", 0), job
    # The message is the dead worker's now: kombu would give it back after a day.
    assert messages(stack.redis_url, stack.queue, job_id) == (0, 1)

    stack.start_worker("w2")
    stack.start_reconciler(interval=1, DISTILLERY_REQUEUE_AFTER_SECONDS=str(REQUEUE_AFTER_S))
    job = api.wait_status(job_id, "succeeded", timeout=180)

    assert job["attempts"] == 1, job
    events = api.events(job_id)
    changes = [e for e in events if e["kind"] == "status"]
    assert [e["status"] for e in changes] == ["queued", "running", "succeeded"]
    assert changes[1]["data"]["worker"].startswith("w2@")
    reenqueued = [e["message"] for e in events if e["kind"] == "reconcile"]
    assert reenqueued and all("no broker message" in m for m in reenqueued), reenqueued
