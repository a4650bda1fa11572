"""Quota checks of the API: `store.quotas` decides, this answers 429 with `Retry-After`."""

from __future__ import annotations

from typing import Any

from pydantic import Field
from sqlalchemy.orm import Session, sessionmaker

from api.errors import ApiError
from api.schemas import ErrorOut
from store.quotas import Exceeded, check_jobs, check_storage, lock_project
from store.settings import Settings

# the part of an upload's Content-Length allowed for the multipart envelope (boundaries, part
# headers, the kind field), as api/routes/uploads.py allows it against the size limit
MULTIPART_ENVELOPE = 64 * 1024


class QuotaExceededOut(ErrorOut):
    """429: the request would take the project over one of its quotas."""

    quota: str = Field(..., description="which: max_running_jobs, max_queued_jobs, ...")
    limit: float = Field(..., description="the project's limit")
    used: float = Field(..., description="what the project uses now")
    retry_after: int = Field(..., description="seconds; also the Retry-After header")


QUOTA_RESPONSES: dict[int | str, dict[str, Any]] = {
    429: {
        "model": QuotaExceededOut,
        "description": "a quota of the project would be exceeded (or the key's request rate: "
        "`rate_limited`); `Retry-After` says when to try again",
    }
}


def too_much(exceeded: Exceeded) -> ApiError:
    return ApiError(
        429,
        exceeded.message,
        "quota_exceeded",
        headers={"Retry-After": str(exceeded.retry_after)},
        quota=exceeded.quota,
        limit=exceeded.limit,
        used=exceeded.used,
        retry_after=exceeded.retry_after,
    )


def enforce_job_quotas(session: Session, owner: str | None, settings: Settings) -> None:
    """Before a job is queued (submit, retry): 429 when the project is at one of its limits.
    Holds the project's row lock until the caller commits, so two submissions cannot both
    take the last place."""
    lock_project(session, owner)
    exceeded = check_jobs(session, owner, settings)
    if exceeded is not None:
        raise too_much(exceeded)


def enforce_storage_quota(
    session: Session, owner: str | None, settings: Settings, incoming: int = 0
) -> None:
    """Before an upload: 429 when the project's storage is full, or `incoming` bytes (the
    request's Content-Length) would overfill it."""
    exceeded = check_storage(session, owner, settings, incoming=incoming)
    if exceeded is not None:
        raise too_much(exceeded)


def enforce_upload_quota(
    sessions: sessionmaker[Session], owner: str | None, settings: Settings, length: str
) -> None:
    """`enforce_storage_quota` for an upload whose Content-Length header is `length` (the
    multipart envelope, up to MULTIPART_ENVELOPE of it, is not held against the file); its own
    session, so an async route can run it in a thread."""
    incoming = max(0, int(length) - MULTIPART_ENVELOPE) if length.isdigit() else 0
    with sessions() as session:
        enforce_storage_quota(session, owner, settings, incoming)
