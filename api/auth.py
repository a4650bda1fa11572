"""Who is calling: `Authorization: Bearer <key>` → the key's project, or a 401.

With `DISTILLERY_AUTH=keys` (the default) every /v1 route needs a valid key (known, not revoked,
not expired), and the project it names becomes the owner every query filters on: another
project's job, upload or artifact is then simply not found (404, never 403, so ids of other
teams leak nothing). With `DISTILLERY_AUTH=none` there are no keys and the owner is None ("every
owner"): only for a service reachable by its single user (`distill serve --no-auth` says so when
it starts).

Then, in this order: the key's request rate (api/ratelimit.py: 429 with Retry-After; per client
address without keys), and its scope: a read-only key may only GET and HEAD (403 otherwise).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

from fastapi import Request
from sqlalchemy.orm import Session, sessionmaker

from api.errors import ApiError
from api.ratelimit import RateLimiter, make_limiter, retry_after
from store.auth import Caller, KeyRefused, check_key
from store.quotas import limit_of
from store.settings import Settings

CHALLENGE = {"WWW-Authenticate": 'Bearer realm="distillery"'}
READ_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
_limiter_lock = threading.Lock()


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
        host = request.client.host if request.client else "unknown"
        limit_rate(request, f"client:{host}", settings.rate_limit_per_minute, "client address")
        return None
    key = bearer_key(request.headers.get("authorization"))
    sessions: sessionmaker[Session] = request.app.state.sessions
    with sessions() as session:
        try:
            caller = check_key(session, key)
        except KeyRefused as exc:
            raise unauthorized(str(exc)) from None
    request.state.api_key_id = caller.key_id
    request.state.caller = caller
    limit = limit_of("rate_limit_per_minute", settings, caller.quotas)
    limit_rate(request, f"key:{caller.key_id}", None if limit is None else int(limit), "API key")
    check_scope(request, caller)
    return caller.project


def check_scope(request: Request, caller: Caller) -> None:
    """A read-only key may look (GET, HEAD) but not change anything."""
    if caller.read_only and request.method not in READ_METHODS:
        raise ApiError(
            403,
            "this API key is read-only: it can list, inspect and download, but not submit, "
            "cancel, retry, upload or delete; use a key created without --read-only",
            "read_only_key",
        )


def limiter(request: Request) -> RateLimiter:
    """The app's rate limiter, made on first use (a service without limits never needs one)."""
    state = request.app.state
    found: RateLimiter | None = getattr(state, "rate_limiter", None)
    if found is None:
        with _limiter_lock:
            found = getattr(state, "rate_limiter", None)
            if found is None:
                found = state.rate_limiter = make_limiter(state.settings)
    return found


def limit_rate(request: Request, bucket: str, per_minute: int | None, per: str) -> None:
    """429 with Retry-After when `bucket` has used up its requests (`per_minute`, None: no
    limit). `app.state.clock` (seconds) stands in for the time in tests."""
    if per_minute is None:
        return
    clock: Callable[[], float] = getattr(request.app.state, "clock", time.time)
    wait = limiter(request).acquire(bucket, per_minute, clock())
    if wait > 0:
        seconds = retry_after(wait)
        raise ApiError(
            429,
            f"too many requests: at most {per_minute} a minute for each {per}; "
            f"retry in {seconds} s",
            "rate_limited",
            headers={"Retry-After": str(seconds)},
            limit=per_minute,
            retry_after=seconds,
        )
