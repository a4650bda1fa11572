"""Exception handlers: every error leaves as JSON with a sentence a user can act on.

User mistakes are 4xx naming the field and the fix (`FieldErrors` → 422 with a list of
`{loc, msg}`); anything unexpected is logged with a reference and answered with a bare 500 that
carries the reference but no traceback.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Sequence
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from sqlalchemy import exc as sa_exc
from starlette.exceptions import HTTPException as StarletteHTTPException

from api.allow import allowed_methods
from kdcore.spec import SpecError
from store.jobs import IllegalTransition

log = logging.getLogger("distillery.api")


class ApiError(Exception):
    """A 4xx the routes raise: `detail` is the sentence, `extra` more top-level keys, `headers`
    response headers (a 401's `WWW-Authenticate`)."""

    def __init__(
        self,
        status_code: int,
        detail: str,
        code: str,
        headers: dict[str, str] | None = None,
        **extra: Any,
    ):
        super().__init__(detail)
        self.status_code = status_code
        self.detail = detail
        self.code = code
        self.headers = headers
        self.extra = extra


class FieldErrors(Exception):
    """A 422 naming one or more fields: (dotted path, message) pairs."""

    def __init__(self, errors: Sequence[tuple[str, str]], code: str = "invalid_request"):
        super().__init__("\n".join(f"{loc}: {msg}" for loc, msg in errors))
        self.errors = list(errors)
        self.code = code


def not_found(what: str, ident: str) -> ApiError:
    return ApiError(404, f"{what} {ident!r} not found", "not_found")


def field_errors_response(errors: Sequence[tuple[str, str]], code: str) -> JSONResponse:
    return JSONResponse(
        status_code=422,
        content={
            "detail": [{"loc": loc, "msg": msg} for loc, msg in errors],
            "message": "\n".join(f"{loc}: {msg}" for loc, msg in errors),
            "code": code,
        },
    )


def _dotted(loc: Sequence[Any]) -> str:
    """FastAPI's ("body", "kind") → "kind"; ("query", "limit") stays "query.limit"."""
    parts = [str(p) for p in loc]
    if parts and parts[0] == "body":
        parts = parts[1:]
    return ".".join(parts) or "(root)"


async def _api_error(_: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, ApiError)
    return JSONResponse(
        status_code=exc.status_code,
        content={"detail": exc.detail, "code": exc.code, **exc.extra},
        headers=exc.headers,
    )


async def _field_errors(_: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, FieldErrors)
    return field_errors_response(exc.errors, exc.code)


async def _spec_error(_: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, SpecError)
    return field_errors_response(exc.errors, "invalid_spec")


async def _request_validation(_: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    errors = [(_dotted(err.get("loc", ())), str(err.get("msg", "invalid"))) for err in exc.errors()]
    return field_errors_response(errors, "invalid_request")


async def _illegal_transition(_: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, IllegalTransition)
    return JSONResponse(
        status_code=409,
        content={"detail": str(exc), "code": "illegal_transition", "status": str(exc.status)},
    )


async def _http_error(request: Request, exc: Exception) -> Response:
    """Starlette's own 404/405 (unknown route, wrong method) in the same JSON shape; a 405
    lists every method of the path in `Allow`, and OPTIONS answers 204 with that list."""
    assert isinstance(exc, StarletteHTTPException)
    code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
    headers = getattr(exc, "headers", None)
    if exc.status_code == 405 and (allowed := allowed_methods(request)):
        if request.method == "OPTIONS":
            return Response(status_code=204, headers={"Allow": ", ".join(allowed)})
        headers = {**(headers or {}), "Allow": ", ".join(allowed)}
    return JSONResponse(
        status_code=exc.status_code,
        content={"detail": exc.detail, "code": code},
        headers=headers,
    )


async def _bad_value(request: Request, exc: Exception) -> JSONResponse:
    """The database refused a value the request carried (a NUL character, a string too long
    for its column): the caller's input, so a 422, without the database's wording."""
    log.info("database refused a value on %s %s: %s", request.method, request.url.path, exc)
    return field_errors_response(
        [
            (
                "(request)",
                "a value in the request cannot be stored or looked up (it contains a NUL "
                "character or is too long); check ids, names and other text fields",
            )
        ],
        "invalid_value",
    )


async def _database_down(request: Request, exc: Exception) -> JSONResponse:
    """Connection trouble is an outage, not a bug: 503 so clients and proxies retry."""
    log.warning("database unavailable on %s %s: %s", request.method, request.url.path, exc)
    return JSONResponse(
        status_code=503,
        content={
            "detail": "the database is unavailable; try again shortly",
            "code": "database_unavailable",
        },
        headers={"Retry-After": "5"},
    )


async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
    ref = uuid.uuid4().hex[:12]
    log.error("unhandled error %s on %s %s", ref, request.method, request.url.path, exc_info=exc)
    return JSONResponse(
        status_code=500,
        content={
            "detail": f"internal error (reference {ref}); the server log has the details",
            "code": "internal_error",
        },
    )


def install(app: FastAPI) -> None:
    app.add_exception_handler(ApiError, _api_error)
    app.add_exception_handler(FieldErrors, _field_errors)
    app.add_exception_handler(SpecError, _spec_error)
    app.add_exception_handler(RequestValidationError, _request_validation)
    app.add_exception_handler(IllegalTransition, _illegal_transition)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_exception_handler(sa_exc.DataError, _bad_value)
    app.add_exception_handler(sa_exc.OperationalError, _database_down)
    app.add_exception_handler(sa_exc.InterfaceError, _database_down)
    app.add_exception_handler(Exception, _unexpected)
