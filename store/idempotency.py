"""Idempotent job submission: one job per (owner, Idempotency-Key), bound to its request.

The request is compared by the sha256 of the validated spec in canonical JSON (sorted keys,
defaults filled in), so a spec that spells a default out or orders its keys differently is the
same request. Race safety comes from the unique (owner, key) constraint, not from a lookup: of
two concurrent submissions with one key, the second insert fails and that request answers with
the first one's job. Keys are kept as long as their job.
"""

from __future__ import annotations

import hashlib
import json

from sqlalchemy import select
from sqlalchemy.orm import Session

from kdcore.spec import JobSpec
from store.models import IdempotencyKey

MAX_KEY_LENGTH = 255


def request_digest(spec: JobSpec) -> str:
    canonical = json.dumps(spec.model_dump(mode="json"), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()


def key_problem(key: str) -> str | None:
    """Why a header value cannot be an idempotency key, or None when it can."""
    if not key or len(key) > MAX_KEY_LENGTH:
        return f"must be 1 to {MAX_KEY_LENGTH} characters"
    if not key.isprintable() or not key.isascii():
        return "must be printable ASCII (a UUID, or a CI pipeline id, works well)"
    return None


def find(s: Session, owner: str, key: str) -> IdempotencyKey | None:
    return s.scalars(
        select(IdempotencyKey).where(IdempotencyKey.owner == owner, IdempotencyKey.key == key)
    ).first()


def remember(s: Session, owner: str, key: str, digest: str, job_id: str) -> None:
    """Bind the key to the job, in the job's own transaction (its commit may then fail with an
    IntegrityError: another request took the key first)."""
    s.add(IdempotencyKey(owner=owner, key=key, request_sha256=digest, job_id=job_id))
