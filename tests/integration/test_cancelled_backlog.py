"""Messages of cancelled jobs cost a worker no child process (issue #11, item 2).

Jobs are submitted and cancelled while no worker runs, so their messages stay on the queue; then
a new job is submitted and a worker started. Its main process must drop the cancelled jobs'
messages itself: the new job is claimed by the pool's first child (a worker forks a fresh child
per message it runs), and every message is acknowledged.

This module deploys a stack of its own: the assertions need a queue and a worker no other test
uses."""

from __future__ import annotations

import json
import time
from typing import Any

import psutil
import redis

CANCELLED = 4


def messages_left(redis_url: str, queue: str) -> list[str]:
    """Messages of `queue` still on the queue or delivered and not acknowledged."""
    client = redis.Redis.from_url(redis_url)
    try:
        waiting = [raw.decode() for raw in client.lrange(queue, 0, -1)]
        unacked = [raw.decode() for raw in client.hvals("unacked") if json.loads(raw)[2] == queue]
        return waiting + unacked
    finally:
        client.close()


def test_cancelled_jobs_messages_are_dropped_without_a_child_process(
    stacks: Any, tiny_job: dict[str, Any]
) -> None:
    stack = stacks("backlog")
    api = stack.start_api()
    cancelled = []
    for _ in range(CANCELLED):
        job_id = api.submit(tiny_job)["id"]
        assert api.http.post(f"/v1/jobs/{job_id}/cancel").json()["status"] == "cancelled"
        cancelled.append(job_id)
    new = api.submit(tiny_job)["id"]
    assert len(messages_left(stack.redis_url, stack.queue)) == CANCELLED + 1

    worker = stack.start_worker("w")
    (first_child,) = psutil.Process(worker.pid).children()  # -c 1: the pool's one child

    job = api.wait_status(new, "succeeded", timeout=180)
    claimed = [e for e in api.events(new) if e["status"] == "running"]
    assert [e["data"]["worker"].rsplit("/", 1)[1] for e in claimed] == [str(first_child.pid)]
    assert job["attempts"] == 1

    deadline = time.monotonic() + 60
    while left := messages_left(stack.redis_url, stack.queue):
        assert time.monotonic() < deadline, f"messages not acknowledged: {left}"
        time.sleep(0.2)
    for job_id in cancelled:
        events = api.events(job_id)
        assert [e["status"] for e in events if e["kind"] == "status"] == ["queued", "cancelled"]
    assert worker.output().count("its message is dropped without a child process") == CANCELLED
