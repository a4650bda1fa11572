"""Who is calling: `Authorization: Bearer <key>` → the key's project, or a 401.

With `DISTILLERY_AUTH=keys` (the default) every /v1 route needs a valid, unrevoked key, and the
project it names becomes the owner every query filters on: another project's job, upload or
artifact is then simply not found (404, never 403, so ids of other teams leak nothing). With
`DISTILLERY_AUTH=none` there are no keys and the owner is None ("every owner"): only for a
service reachable by its single user (`distill serve --no-auth` says so when it starts).
"""

from __future__ import annotations

from fastapi import Request
from sqlalchemy.orm import Session, sessionmaker

from api.errors import ApiError
from store.auth import authenticate
from store.settings import Settings

CHALLENGE = {"WWW-Authenticate": 'Bearer realm="distillery"'}


def unauthorized(detail: str) -> ApiError:
    return ApiError(401, detail, "unauthorized", headers=CHALLENGE)


def bearer_key(header: str | None) -> str:
    """The key in an Authorization header, or a 401 saying what is wrong with it."""
    if not header:
        raise unauthorized(
            "this service needs an API key: send `Authorization: Bearer <key>` "
            "(set DISTILLERY_TOKEN for the distill command; an admin creates keys with "
            "`distill keys create --project NAME`)"
        )
    scheme, _, key = header.strip().partition(" ")
    key = key.strip()
    if scheme.lower() != "bearer" or not key:
        raise unauthorized("the Authorization header must read `Bearer <key>`")
    return key


def owner_of(request: Request) -> str | None:
    """The project name the request acts for; None when the service runs without keys."""
    settings: Settings = request.app.state.settings
    if settings.auth == "none":
        return None
    key = bearer_key(request.headers.get("authorization"))
    sessions: sessionmaker[Session] = request.app.state.sessions
    with sessions() as session:
        caller = authenticate(session, key)
    if caller is None:
        raise unauthorized("the API key is not valid (unknown or revoked); ask for a new one")
    request.state.api_key_id = caller.key_id
    return caller.project
