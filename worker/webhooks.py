"""Sending job-end webhooks: signed POSTs with retries, each attempt a job event.

The rows to send are written by store.jobs in the transaction that ends a job (store/webhooks.py
explains the outbox). Two senders drain it:

- the worker that ended the job, right after its commit (`deliver_for_job`): it retries with
  backoff for at most `webhook_inline_seconds`, then leaves the rest and takes the next job;
- the reconciler, every pass (`deliver_due`, one attempt per due row, no waiting): what the
  worker left, and jobs ended elsewhere (a queued job cancelled through the API).

Nothing here can change a job's status: it runs after the job's own transaction has committed,
and every failure is recorded and logged, never raised.

Each attempt checks the URL against the egress rules again (store/egress.py: no loopback,
private, link-local or metadata address unless DISTILLERY_WEBHOOK_ALLOW admits it) and connects
to the address it checked, with the URL's Host header and TLS server name, so DNS that changes
in between cannot send it elsewhere. A redirect is never followed: the receiver's answer counts
as it is. A refused URL and a redirect end the delivery at once (another attempt would be
refused again); a host that does not resolve is retried like any failure.

The signature (header `Distillery-Signature: t=<unix time>,v1=<hex>`) is HMAC-SHA256 over
`"<t>.<body>"` with the project's webhook secret, or DISTILLERY_WEBHOOK_SECRET; a receiver
recomputes it (`verify_signature`) and refuses old timestamps to stop replays. The body is the
same bytes on every attempt; `Distillery-Delivery` (also the body's `id`) lets a receiver drop
a repeat.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import time
from dataclasses import dataclass

import httpx
from sqlalchemy import Engine

from store.auth import project_webhook_secret
from store.db import session_scope
from store.egress import EgressRefused, Target, Unresolvable, resolve_target
from store.jobs import add_event
from store.models import utcnow
from store.settings import Settings
from store.webhooks import ClaimedDelivery, claim_due, next_attempt_at, record_attempt

log = logging.getLogger(__name__)

SIGNATURE_HEADER = "Distillery-Signature"
USER_AGENT = "Distillery-Webhook/1"
CLAIM_SLACK_S = 30.0  # a claimed row stays hidden this much longer than the request may take


def signature(secret: str, timestamp: int, body: bytes) -> str:
    mac = hmac.new(secret.encode(), f"{timestamp}.".encode() + body, hashlib.sha256)
    return mac.hexdigest()


def signature_header(secret: str, body: bytes, timestamp: int | None = None) -> str:
    t = int(time.time()) if timestamp is None else timestamp
    return f"t={t},v1={signature(secret, t, body)}"


def verify_signature(
    secret: str, header: str, body: bytes, tolerance_s: float = 300, now: float | None = None
) -> bool:
    """What a receiver does: the header's v1 matches the body and its timestamp is recent."""
    parts = dict(p.split("=", 1) for p in header.split(",") if "=" in p)
    try:
        t = int(parts["t"])
    except (KeyError, ValueError):
        return False
    if abs((time.time() if now is None else now) - t) > tolerance_s:
        return False
    return hmac.compare_digest(parts.get("v1", ""), signature(secret, t, body))


def backoff_s(attempt: int, settings: Settings) -> float:
    """The wait after failed attempt `attempt` (1-based): base, 2x base, 4x base, ... capped."""
    delay = settings.webhook_backoff_seconds * 2 ** (attempt - 1)
    return min(delay, settings.webhook_backoff_max_seconds)


@dataclass(frozen=True)
class Attempt:
    delivery_id: str
    job_id: str
    attempt: int
    delivered: bool
    status_code: int | None
    error: str | None
    final: bool = False  # no further attempt (a refused URL, a redirect)


def body_of(d: ClaimedDelivery) -> bytes:
    return json.dumps(d.payload, sort_keys=True, separators=(",", ":")).encode()


def _post(d: ClaimedDelivery, secret: str | None, settings: Settings) -> Attempt:
    body = body_of(d)
    headers = {
        "Content-Type": "application/json",
        "User-Agent": USER_AGENT,
        "Distillery-Event": d.event,
        "Distillery-Delivery": d.id,
    }
    if secret:
        headers[SIGNATURE_HEADER] = signature_header(secret, body)
    try:
        target = resolve_target(d.url, settings.webhook_allow_rules)
    except Unresolvable as exc:
        return Attempt(d.id, d.job_id, d.attempt, False, None, str(exc))
    except EgressRefused as exc:
        return Attempt(d.id, d.job_id, d.attempt, False, None, f"refused: {exc}", final=True)
    try:
        status, location = _send(target, body, headers, settings.webhook_timeout_seconds)
    except httpx.HTTPError as exc:
        return Attempt(d.id, d.job_id, d.attempt, False, None, f"{type(exc).__name__}: {exc}")
    if 200 <= status < 300:
        return Attempt(d.id, d.job_id, d.attempt, True, status, None)
    if 300 <= status < 400:
        error = (
            f"HTTP {status}: the redirect to {location or '(no location)'} is not followed; "
            "name the final receiver in notify.webhook_url"
        )
        return Attempt(d.id, d.job_id, d.attempt, False, status, error, final=True)
    return Attempt(d.id, d.job_id, d.attempt, False, status, f"HTTP {status}")


def _send(
    target: Target, body: bytes, headers: dict[str, str], timeout: float
) -> tuple[int, str | None]:
    """POST to the checked addresses in turn until one takes the connection; (status, the
    Location header). Redirects are not followed, and the answer's body is never read."""
    extensions = {"sni_hostname": target.host} if target.scheme == "https" else {}
    with httpx.Client(timeout=timeout, follow_redirects=False) as client:
        for i, address in enumerate(target.addresses):
            request = client.build_request(
                "POST",
                target.pinned_url(address),
                content=body,
                headers={**headers, "Host": target.host_header},
                extensions=extensions,
            )
            try:
                response = client.send(request, stream=True)
            except (httpx.ConnectError, httpx.ConnectTimeout):
                if i == len(target.addresses) - 1:
                    raise
                continue
            response.close()
            return response.status_code, response.headers.get("location")
    raise AssertionError("resolve_target returns at least one address")


def _record(
    engine: Engine, d: ClaimedDelivery, a: Attempt, signed: bool, settings: Settings
) -> None:
    last = d.attempt >= settings.webhook_max_attempts or a.final
    retry_in = None if a.delivered or last else backoff_s(d.attempt, settings)
    if a.delivered:
        outcome = "delivered"
        message = f"webhook {d.event} delivered to {d.url} (HTTP {a.status_code})"
    elif retry_in is not None:
        outcome = "retrying"
        message = f"webhook to {d.url} failed ({a.error}); retrying in {retry_in:g} s"
    else:
        outcome = "gave_up"
        message = f"webhook to {d.url} failed ({a.error}); gave up after {d.attempt} attempts"
    if not signed:
        message += " [unsigned: no webhook secret is configured]"
    with session_scope(engine) as s:
        if not record_attempt(s, d, delivered=a.delivered, error=a.error, retry_in_s=retry_in):
            log.warning("webhook %s attempt %d: claim lost; outcome not recorded", d.id, d.attempt)
            return
        add_event(
            s,
            d.job_id,
            "webhook",
            message,
            data={
                "delivery_id": d.id,
                "event": d.event,
                "url": d.url,
                "attempt": d.attempt,
                "outcome": outcome,
                "status_code": a.status_code,
                "error": a.error,
                "signed": signed,
            },
        )
    log.info("job %s: %s", d.job_id, message)


def deliver_due(engine: Engine, settings: Settings, job_id: str | None = None) -> list[Attempt]:
    """One attempt for every due delivery (of `job_id`, or of every job)."""
    hold = settings.webhook_timeout_seconds + CLAIM_SLACK_S
    with session_scope(engine) as s:
        claimed = claim_due(s, hold, job_id=job_id)
        secrets = {d.id: project_webhook_secret(s, d.owner) for d in claimed}
    attempts = []
    for d in claimed:
        secret = secrets[d.id] or settings.webhook_secret or None
        a = _post(d, secret, settings)
        _record(engine, d, a, secret is not None, settings)
        attempts.append(a)
    return attempts


def deliver_for_job(engine: Engine, settings: Settings, job_id: str) -> None:
    """Send a just-ended job's webhooks, retrying while the next attempt is due within
    `webhook_inline_seconds`; never raises."""
    deadline = time.monotonic() + settings.webhook_inline_seconds
    try:
        while True:
            deliver_due(engine, settings, job_id)
            with session_scope(engine) as s:
                due = next_attempt_at(s, job_id)
            if due is None:
                return
            wait = max((due - utcnow()).total_seconds(), 0.0)
            if time.monotonic() + wait > deadline:
                log.info("job %s: webhook retries left to the reconciler", job_id)
                return
            time.sleep(wait)
    except Exception:
        log.exception("job %s: webhook delivery failed; the reconciler will retry", job_id)
