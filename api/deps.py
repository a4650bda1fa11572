"""Request dependencies: the database session, the caller's identity, the app's shared objects.

Everything a route needs comes from `request.app.state` (set by `create_app`), never from
module globals, so two apps with different settings can live in one process (tests do).
`current_owner` is where authentication slots in (api/auth.py): every query filters on it.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Annotated

from celery import Celery
from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from sqlalchemy.orm import Session, sessionmaker

from api.auth import owner_of
from api.errors import not_found
from store.blobs import BlobStore
from store.jobs import get_job
from store.models import Job
from store.settings import Settings


def get_sessions(request: Request) -> sessionmaker[Session]:
    return request.app.state.sessions


def get_session(request: Request) -> Iterator[Session]:
    """One session per request; routes commit what they change, the rest is rolled back."""
    session = get_sessions(request)()
    try:
        yield session
    finally:
        session.close()


# Declares the scheme in the OpenAPI document (the docs' "Authorize" button); the header is
# parsed by api.auth, whose 401s say what exactly is wrong.
bearer_scheme = HTTPBearer(
    auto_error=False,
    description="an API key from `distill keys create --project NAME`",
)


def current_owner(
    request: Request,
    _: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer_scheme)] = None,
) -> str | None:
    """The calling project's name (401 without a valid key); None means "every owner" and
    happens only on a service started without keys (DISTILLERY_AUTH=none)."""
    return owner_of(request)


def get_settings(request: Request) -> Settings:
    return request.app.state.settings


def get_blobs(request: Request) -> BlobStore:
    return request.app.state.blobs


def get_celery(request: Request) -> Celery:
    return request.app.state.celery


DbSession = Annotated[Session, Depends(get_session)]
Owner = Annotated[str | None, Depends(current_owner)]
AppSettings = Annotated[Settings, Depends(get_settings)]
Blobs = Annotated[BlobStore, Depends(get_blobs)]
CeleryApp = Annotated[Celery, Depends(get_celery)]


def upload_owner(owner: str | None) -> str:
    """Uploads store "" for "no owner" (it is part of their unique key, and NULLs never clash)."""
    return owner or ""


def load_job(session: Session, job_id: str, owner: str | None, *, lock: bool = False) -> Job:
    """The caller's job or a 404; `lock` takes a row lock so a state change cannot race the
    worker's own conditional updates (PostgreSQL; SQLite serialises writers anyway)."""
    job = get_job(session, job_id, owner)
    if job is None:
        raise not_found("job", job_id)
    if lock:
        session.refresh(job, with_for_update=True)
    return job
