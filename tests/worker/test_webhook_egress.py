"""At delivery time a webhook goes only where the egress rules allow (issue #11, item 7): the
host is resolved and checked again (a spec accepted earlier, or DNS that changed since), the
request connects to the very address that was checked, and a redirect is never followed."""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
from sqlalchemy import Engine, select

from store.db import session_scope
from store.jobs import request_cancel
from store.models import Job, JobEvent, WebhookDelivery
from store.settings import Settings
from worker.webhooks import deliver_due


class Receiver:
    """An endpoint on 127.0.0.1 answering `status` (with `location`, for a redirect); it keeps
    each request's headers."""

    def __init__(self, status: int = 200, location: str | None = None) -> None:
        self.requests: list[dict[str, str]] = []
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                self.rfile.read(int(self.headers.get("content-length", 0)))
                receiver.requests.append(dict(self.headers))
                self.send_response(status)
                if location:
                    self.send_header("location", location)
                self.send_header("content-length", "0")
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        self.url = f"http://127.0.0.1:{self.port}/hook"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def receivers() -> Iterator[list[Receiver]]:
    made: list[Receiver] = []
    yield made
    for r in made:
        r.close()


@pytest.fixture
def dns(monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    """Names the service resolves, as the test sets them (nothing else resolves)."""
    table: dict[str, str] = {}

    def getaddrinfo(host: str, port: Any, *args: Any, **kwargs: Any) -> list[Any]:
        if host not in table:
            raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
        return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", (table[host], port))]

    monkeypatch.setattr("store.egress.getaddrinfo", getaddrinfo)
    return table


def cancelled_job_with_webhook(jobs: Any, tiny: Any, engine: Engine, url: str) -> str:
    """A job whose spec names `url` (made directly: as if accepted before the rules or the DNS
    changed), cancelled, so its webhook is due."""
    job_id: str = jobs.make(tiny(notify={"webhook_url": url}))
    with session_scope(engine) as s:
        job = s.get(Job, job_id)
        assert job is not None
        request_cancel(s, job)
    return job_id


def outcome_of(engine: Engine, job_id: str) -> tuple[str, list[str]]:
    with session_scope(engine) as s:
        (d,) = s.scalars(select(WebhookDelivery).where(WebhookDelivery.job_id == job_id))
        events = s.scalars(
            select(JobEvent).where(JobEvent.job_id == job_id, JobEvent.kind == "webhook")
        )
        return d.status, [(e.data or {})["outcome"] for e in events]


def test_delivery_to_loopback_is_refused_without_the_allow_list(
    jobs: Any, tiny: Any, settings: Settings, engine: Engine, receivers: list[Receiver]
) -> None:
    receivers.append(Receiver())
    job_id = cancelled_job_with_webhook(jobs, tiny, engine, receivers[0].url)
    (attempt,) = deliver_due(engine, settings, job_id)
    assert not attempt.delivered
    assert "refused" in (attempt.error or "") and "loopback" in (attempt.error or "")
    assert receivers[0].requests == []
    assert outcome_of(engine, job_id) == ("failed", ["gave_up"])  # a refusal is not retried


def test_the_request_connects_to_the_checked_address(
    jobs: Any,
    tiny: Any,
    settings: Settings,
    engine: Engine,
    receivers: list[Receiver],
    dns: dict[str, str],
) -> None:
    """`hooks.test` resolves (only) through the checked lookup: the connection uses that answer
    instead of resolving again, so a DNS answer that changes in between cannot redirect it."""
    receivers.append(Receiver())
    dns["hooks.test"] = "127.0.0.1"
    allowing = settings.model_copy(update={"webhook_allow": "hooks.test"})
    url = f"http://hooks.test:{receivers[0].port}/hook"
    job_id = cancelled_job_with_webhook(jobs, tiny, engine, url)
    (attempt,) = deliver_due(engine, allowing, job_id)
    assert attempt.delivered, attempt
    (headers,) = receivers[0].requests
    assert headers["Host"] == f"hooks.test:{receivers[0].port}"


def test_a_redirect_to_loopback_from_an_allowed_receiver_is_not_followed(
    jobs: Any,
    tiny: Any,
    settings: Settings,
    engine: Engine,
    receivers: list[Receiver],
    dns: dict[str, str],
) -> None:
    admin = Receiver()
    receivers.append(admin)
    receivers.append(Receiver(307, f"http://127.0.0.1:{admin.port}/internal-admin"))
    dns["hooks.test"] = "127.0.0.1"
    allowing = settings.model_copy(update={"webhook_allow": "hooks.test"})
    url = f"http://hooks.test:{receivers[1].port}/hook"
    job_id = cancelled_job_with_webhook(jobs, tiny, engine, url)
    (attempt,) = deliver_due(engine, allowing, job_id)
    assert not attempt.delivered
    assert "redirect" in (attempt.error or "") and "not followed" in (attempt.error or "")
    assert len(receivers[1].requests) == 1 and admin.requests == []
    assert outcome_of(engine, job_id) == ("failed", ["gave_up"])


def test_a_host_that_does_not_resolve_is_retried(
    jobs: Any, tiny: Any, settings: Settings, engine: Engine, dns: dict[str, str]
) -> None:
    """Unlike a refusal, a name that does not resolve (now) is worth another attempt."""
    job_id = cancelled_job_with_webhook(jobs, tiny, engine, "http://gone.test/hook")
    (attempt,) = deliver_due(engine, settings, job_id)
    assert not attempt.delivered and "cannot resolve gone.test" in (attempt.error or "")
    assert outcome_of(engine, job_id) == ("pending", ["retrying"])
