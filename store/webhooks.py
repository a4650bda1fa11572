"""The webhook outbox: job-end notifications as rows, written with the state change they report.

A job whose spec names `notify.webhook_url` gets a `WebhookDelivery` row in the very transaction
that ends it (succeeded, failed or cancelled, whoever ends it: worker, API or reconciler), so a
notification is never lost and never sent for a change that was rolled back. Sending happens
after that commit (worker/webhooks.py): a sender claims a due row by pushing its
`next_attempt_at` past the attempt's timeout (so no one else sends it meanwhile), POSTs, and
records the outcome, fenced on the attempt number it claimed. The URL itself must pass the
egress rules (store/egress.py): at submit (`webhook_url_errors`) and again at each delivery.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from kdcore.spec import JobSpec
from store.egress import Allow, EgressRefused, Unresolvable, resolve_target
from store.models import (
    Artifact,
    Evaluation,
    Job,
    WebhookDelivery,
    WebhookStatus,
    new_id,
    utcnow,
)

EVENT_OF_STATUS = {
    "succeeded": "job.succeeded",
    "failed": "job.failed",
    "cancelled": "job.cancelled",
}


def webhook_url(spec: dict[str, Any] | None) -> str | None:
    notify = (spec or {}).get("notify") or {}
    url = notify.get("webhook_url")
    return str(url) if url else None


def webhook_url_errors(spec: JobSpec, allow: Allow) -> list[tuple[str, str]]:
    """At submit: `notify.webhook_url` must be a receiver the egress rules allow. A host that
    does not resolve now passes (each delivery checks again, and a DNS outage must not refuse
    a job)."""
    url = spec.notify.webhook_url
    if url is None:
        return []
    try:
        resolve_target(str(url), allow)
    except Unresolvable:
        return []
    except EgressRefused as exc:
        return [("notify.webhook_url", str(exc))]
    return []


def _iso(value: datetime | None) -> str | None:
    return value.isoformat() if value is not None else None


def job_payload(
    delivery_id: str,
    job: Job,
    evaluation: Evaluation | None,
    artifacts: list[Artifact],
) -> dict[str, Any]:
    """The JSON a receiver gets: enough to act (publish the student, page someone) without
    another request; `download_url`s are paths on this API (they need a key of the project)."""
    ev = None
    if evaluation is not None:
        ev = {
            "teacher_accuracy": evaluation.teacher_accuracy,
            "student_accuracy": evaluation.student_accuracy,
            "baseline_accuracy": evaluation.baseline_accuracy,
            "gap": evaluation.gap,
            # "teacher", or "dynamic_teacher" for a GPD job without a teacher (teacher_* null)
            "gap_reference": evaluation.gap_reference,
            "dynamic_teacher_accuracy": evaluation.dynamic_teacher_accuracy,
            "compression_ratio": evaluation.compression_ratio,
            "gate_passed": evaluation.gate_passed,
            "gates": evaluation.gates,
        }
    return {
        "id": delivery_id,
        "type": EVENT_OF_STATUS[job.status],
        "created_at": utcnow().isoformat(),
        "job": {
            "id": job.id,
            "name": job.name,
            "project": job.owner,
            "status": job.status,
            "attempts": job.attempts,
            "created_at": _iso(job.created_at),
            "finished_at": _iso(job.finished_at),
            "error_code": job.error_code,
            "error_message": job.error_message,
            "url": f"/v1/jobs/{job.id}",
        },
        "evaluation": ev,
        "artifacts": [
            {
                "format": a.format,
                "filename": a.filename,
                "sha256": a.sha256,
                "size_bytes": a.size_bytes,
                "download_url": f"/v1/jobs/{job.id}/artifacts/{a.format}",
            }
            for a in artifacts
        ],
    }


def queue_notification(
    s: Session,
    job: Job,
    *,
    evaluation: Evaluation | None = None,
    artifacts: list[Artifact] | None = None,
) -> WebhookDelivery | None:
    """Add the delivery for a job that has just ended (in the caller's transaction); None when
    its spec asks for no webhook."""
    url = webhook_url(job.spec)
    if url is None or job.status not in EVENT_OF_STATUS:
        return None
    delivery_id = new_id()
    delivery = WebhookDelivery(
        id=delivery_id,
        job_id=job.id,
        url=url,
        event=EVENT_OF_STATUS[job.status],
        payload=job_payload(delivery_id, job, evaluation, artifacts or []),
        status=WebhookStatus.pending,
        attempts=0,
        next_attempt_at=utcnow(),
    )
    s.add(delivery)
    return delivery


@dataclass(frozen=True)
class ClaimedDelivery:
    """A delivery a sender holds for one attempt."""

    id: str
    job_id: str
    owner: str | None
    url: str
    event: str
    payload: dict[str, Any]
    attempt: int


def claim_due(
    s: Session, hold_s: float, *, job_id: str | None = None, limit: int = 20
) -> list[ClaimedDelivery]:
    """Pending deliveries whose time has come, each claimed for one attempt (attempts + 1,
    hidden from other senders for `hold_s`)."""
    now = utcnow()
    q = select(WebhookDelivery.id).where(
        WebhookDelivery.status == WebhookStatus.pending, WebhookDelivery.next_attempt_at <= now
    )
    if job_id is not None:
        q = q.where(WebhookDelivery.job_id == job_id)
    ids = list(
        s.scalars(
            q.order_by(WebhookDelivery.next_attempt_at)
            .limit(limit)
            .with_for_update(skip_locked=True)
        )
    )
    claimed = []
    for delivery_id in ids:
        row = s.execute(
            update(WebhookDelivery)
            .where(
                WebhookDelivery.id == delivery_id,
                WebhookDelivery.status == WebhookStatus.pending,
                WebhookDelivery.next_attempt_at <= now,
            )
            .values(
                attempts=WebhookDelivery.attempts + 1,
                next_attempt_at=now + timedelta(seconds=hold_s),
            )
            .returning(
                WebhookDelivery.job_id,
                WebhookDelivery.url,
                WebhookDelivery.event,
                WebhookDelivery.payload,
                WebhookDelivery.attempts,
            )
        ).one_or_none()
        if row is None:
            continue
        owner = s.scalars(select(Job.owner).where(Job.id == row.job_id)).first()
        claimed.append(
            ClaimedDelivery(
                delivery_id, row.job_id, owner, row.url, row.event, row.payload, row.attempts
            )
        )
    return claimed


def record_attempt(
    s: Session,
    d: ClaimedDelivery,
    *,
    delivered: bool,
    error: str | None,
    retry_in_s: float | None,
) -> bool:
    """Write an attempt's outcome: delivered, pending again (`retry_in_s`), or failed for good
    (`retry_in_s` None). False when the claim was lost (another sender took the row over)."""
    now = utcnow()
    values: dict[str, Any] = {"last_error": error}
    if delivered:
        values.update(status=WebhookStatus.delivered, delivered_at=now, last_error=None)
    elif retry_in_s is None:
        values.update(status=WebhookStatus.failed)
    else:
        values.update(next_attempt_at=now + timedelta(seconds=retry_in_s))
    result = s.execute(
        update(WebhookDelivery)
        .where(
            WebhookDelivery.id == d.id,
            WebhookDelivery.attempts == d.attempt,
            WebhookDelivery.status == WebhookStatus.pending,
        )
        .values(**values)
        .returning(WebhookDelivery.id)
    )
    return result.scalar_one_or_none() is not None


def next_attempt_at(s: Session, job_id: str) -> datetime | None:
    """When the job's earliest pending delivery is due; None when none is pending."""
    return s.scalars(
        select(WebhookDelivery.next_attempt_at)
        .where(WebhookDelivery.job_id == job_id, WebhookDelivery.status == WebhookStatus.pending)
        .order_by(WebhookDelivery.next_attempt_at)
    ).first()
