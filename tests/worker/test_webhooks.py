"""Job-end webhooks: queued with the job's end, sent after it, signed, retried with backoff,
every attempt a job event, and never a change to the job's status."""

from __future__ import annotations

import json
import threading
import uuid
from collections.abc import Callable, Iterator
from datetime import timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
from sqlalchemy import Engine, select, update

from store.auth import get_or_create_project, set_webhook_secret
from store.db import session_scope
from store.jobs import request_cancel
from store.models import Job, JobEvent, JobStatus, WebhookDelivery, utcnow
from store.settings import Settings
from worker.reconciler import reconcile
from worker.runner import Outcome
from worker.webhooks import (
    SIGNATURE_HEADER,
    backoff_s,
    deliver_due,
    signature_header,
    verify_signature,
)

SECRET = "whsec_test"


class Receiver:
    """A webhook endpoint on 127.0.0.1 that answers each request with the next status of
    `statuses` (then 200) and keeps what it got."""

    def __init__(self) -> None:
        self.statuses: list[int] = []
        self.requests: list[tuple[dict[str, str], bytes]] = []
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("content-length", 0)))
                receiver.requests.append((dict(self.headers), body))
                status = receiver.statuses.pop(0) if receiver.statuses else 200
                self.send_response(status)
                self.send_header("content-length", "0")
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    r = Receiver()
    yield r
    r.close()


@pytest.fixture
def hook_settings(settings: Settings) -> Settings:
    return settings.model_copy(
        update={
            "webhook_secret": SECRET,
            "webhook_backoff_seconds": 0.05,
            "webhook_max_attempts": 3,
            "webhook_timeout_seconds": 5.0,
            "webhook_inline_seconds": 10.0,
            "webhook_allow": "127.0.0.1",  # the receivers run on loopback (store/egress.py)
        }
    )


def webhook_events(engine: Engine, job_id: str) -> list[JobEvent]:
    with session_scope(engine) as s:
        q = select(JobEvent).where(JobEvent.job_id == job_id, JobEvent.kind == "webhook")
        return list(s.scalars(q.order_by(JobEvent.id)))


def deliveries(engine: Engine, job_id: str) -> list[WebhookDelivery]:
    with session_scope(engine) as s:
        q = select(WebhookDelivery).where(WebhookDelivery.job_id == job_id)
        return list(s.scalars(q))


# --- signing -----------------------------------------------------------------------------------


def test_the_signature_covers_timestamp_and_body() -> None:
    body = b'{"id":"x"}'
    header = signature_header(SECRET, body, timestamp=1_700_000_000)
    assert header.startswith("t=1700000000,v1=")
    assert verify_signature(SECRET, header, body, now=1_700_000_010)
    assert not verify_signature(SECRET, header, body + b" ", now=1_700_000_010)
    assert not verify_signature("other", header, body, now=1_700_000_010)
    assert not verify_signature(SECRET, header, body, now=1_700_000_000 + 3600)  # a replay
    assert not verify_signature(SECRET, "v1=abc", body)


def test_backoff_doubles_up_to_its_cap(settings: Settings) -> None:
    s = settings.model_copy(
        update={"webhook_backoff_seconds": 2, "webhook_backoff_max_seconds": 10}
    )
    assert [backoff_s(n, s) for n in (1, 2, 3, 4, 5)] == [2, 4, 8, 10, 10]


# --- from the worker ------------------------------------------------------------------------


def test_a_finished_job_posts_a_signed_summary_retried_after_a_failure(
    jobs: Any,
    tiny: Callable[..., dict[str, Any]],
    hook_settings: Settings,
    engine: Engine,
    blobs: Any,
    receiver: Receiver,
) -> None:
    from worker.runner import execute_job

    receiver.statuses = [500]  # the first attempt fails
    job_id = jobs.make(tiny(notify={"webhook_url": receiver.url}, gates={"max_gap": 100}))
    outcome = execute_job(job_id, hook_settings, engine, blobs, "w1")
    assert outcome.status == JobStatus.succeeded

    assert len(receiver.requests) == 2
    (h1, b1), (h2, b2) = receiver.requests
    assert b1 == b2 and h1["Distillery-Delivery"] == h2["Distillery-Delivery"]
    assert verify_signature(SECRET, h2[SIGNATURE_HEADER], b2)
    assert h2["Distillery-Event"] == "job.succeeded"
    payload = json.loads(b2)
    assert payload["type"] == "job.succeeded" and payload["id"] == h2["Distillery-Delivery"]
    assert payload["job"]["id"] == job_id and payload["job"]["status"] == "succeeded"
    assert payload["evaluation"]["gate_passed"] is True
    assert payload["evaluation"]["gap_reference"] == "teacher"
    assert payload["evaluation"]["dynamic_teacher_accuracy"] is None
    assert {a["format"] for a in payload["artifacts"]} == {"onnx", "safetensors", "config"}
    assert payload["artifacts"][0]["download_url"].startswith(f"/v1/jobs/{job_id}/artifacts/")

    events = webhook_events(engine, job_id)
    assert [e.data["outcome"] for e in events] == ["retrying", "delivered"]
    assert [e.data["attempt"] for e in events] == [1, 2]
    assert events[0].data["status_code"] == 500 and "retrying in" in events[0].message
    (d,) = deliveries(engine, job_id)
    assert (d.status, d.attempts, d.delivered_at is not None) == ("delivered", 2, True)
    assert jobs.get(job_id).status == JobStatus.succeeded


def test_a_receiver_that_never_answers_well_changes_nothing_about_the_job(
    jobs: Any,
    tiny: Callable[..., dict[str, Any]],
    hook_settings: Settings,
    engine: Engine,
    blobs: Any,
    receiver: Receiver,
) -> None:
    from worker.runner import execute_job

    receiver.statuses = [500, 502, 503, 500]
    spec = tiny(notify={"webhook_url": receiver.url}, data={"source": "upload:nope"})
    job_id = jobs.make(spec)
    outcome: Outcome = execute_job(job_id, hook_settings, engine, blobs, "w1")
    assert outcome.status == JobStatus.failed
    assert len(receiver.requests) == 3  # webhook_max_attempts
    assert json.loads(receiver.requests[0][1])["type"] == "job.failed"
    outcomes = [e.data["outcome"] for e in webhook_events(engine, job_id)]
    assert outcomes == ["retrying", "retrying", "gave_up"]
    (d,) = deliveries(engine, job_id)
    assert (d.status, d.last_error) == ("failed", "HTTP 503")
    job = jobs.get(job_id)
    assert (job.status, job.error_code) == ("failed", "invalid_input")


def test_an_unreachable_receiver_is_recorded_not_raised(
    jobs: Any, tiny: Callable[..., dict[str, Any]], hook_settings: Settings, engine: Engine
) -> None:
    job_id = jobs.make(tiny(notify={"webhook_url": "http://127.0.0.1:1/hook"}))
    with session_scope(engine) as s:
        request_cancel(s, s.get(Job, job_id))
    one_try = hook_settings.model_copy(update={"webhook_max_attempts": 1})
    (attempt,) = deliver_due(engine, one_try, job_id)
    assert not attempt.delivered and "ConnectError" in (attempt.error or "")
    (event,) = webhook_events(engine, job_id)
    assert event.data["outcome"] == "gave_up"


def test_no_webhook_without_a_url(
    jobs: Any, tiny: Callable[..., dict[str, Any]], engine: Engine
) -> None:
    job_id = jobs.make(tiny())
    with session_scope(engine) as s:
        request_cancel(s, s.get(Job, job_id))
    assert deliveries(engine, job_id) == []


# --- from the reconciler ----------------------------------------------------------------------


def test_the_reconciler_sends_what_no_worker_sent(
    jobs: Any,
    tiny: Callable[..., dict[str, Any]],
    hook_settings: Settings,
    engine: Engine,
    app: Any,
    receiver: Receiver,
) -> None:
    """A queued job cancelled through the API never reaches a worker: its webhook goes out
    with the reconciler's next pass, signed with the project's own secret."""
    project = f"proj-{uuid.uuid4().hex[:8]}"
    with session_scope(engine) as s:
        get_or_create_project(s, project)
        own_secret = set_webhook_secret(s, project)
    job_id = jobs.make(tiny(notify={"webhook_url": receiver.url}), owner=project)
    with session_scope(engine) as s:
        request_cancel(s, s.get(Job, job_id))  # queued → cancelled, delivery queued with it
    assert receiver.requests == []
    counts = reconcile(hook_settings, engine, app)
    assert counts["webhooks"] >= 1
    (headers, body) = receiver.requests[0]
    payload = json.loads(body)
    assert (payload["type"], payload["job"]["project"]) == ("job.cancelled", project)
    assert verify_signature(own_secret, headers[SIGNATURE_HEADER], body)
    assert not verify_signature(SECRET, headers[SIGNATURE_HEADER], body)
    assert [e.data["outcome"] for e in webhook_events(engine, job_id)] == ["delivered"]


def test_retries_a_worker_could_not_wait_for_are_left_to_the_reconciler(
    jobs: Any,
    tiny: Callable[..., dict[str, Any]],
    hook_settings: Settings,
    engine: Engine,
    blobs: Any,
    app: Any,
    receiver: Receiver,
) -> None:
    from worker.runner import execute_job

    receiver.statuses = [500]
    impatient = hook_settings.model_copy(
        update={"webhook_inline_seconds": 0.0, "webhook_backoff_seconds": 3600.0}
    )
    job_id = jobs.make(tiny(notify={"webhook_url": receiver.url}, train={"epochs": 1}))
    assert execute_job(job_id, impatient, engine, blobs, "w1").status == JobStatus.succeeded
    assert len(receiver.requests) == 1
    (d,) = deliveries(engine, job_id)
    assert (d.status, d.attempts) == ("pending", 1)
    reconcile(impatient, engine, app)  # not due yet: nothing sent
    assert len(receiver.requests) == 1
    with session_scope(engine) as s:  # the backoff has passed (no waiting on the clock)
        s.execute(
            update(WebhookDelivery)
            .where(WebhookDelivery.job_id == job_id)
            .values(next_attempt_at=utcnow() - timedelta(seconds=1))
        )
    reconcile(impatient, engine, app)
    assert len(receiver.requests) == 2
    (d,) = deliveries(engine, job_id)
    assert (d.status, d.attempts) == ("delivered", 2)
