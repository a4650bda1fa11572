"""What the SDK raises: one class per thing a caller handles differently.

An HTTP error becomes the class of its status (401 `Unauthorized`, 404 `NotFound`, 409
`Conflict`, 400/413/415/422 `InvalidRequest` with the server's field paths), carrying the
server's sentence, so `except NotFound` reads like the situation it handles. Everything derives
from `DistilleryError`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import httpx


@dataclass(frozen=True)
class FieldError:
    loc: str  # dotted spec path, e.g. "method.name"
    msg: str

    def __str__(self) -> str:
        return f"{self.loc}: {self.msg}"


class DistilleryError(Exception):
    """Anything that went wrong talking to Distillery."""


class ServiceUnavailable(DistilleryError):
    """The server could not be reached, or kept answering 502/503/504."""


class ApiError(DistilleryError):
    """The server answered with an error status."""

    def __init__(self, status_code: int, detail: str, code: str | None, body: Any = None):
        super().__init__(f"HTTP {status_code}: {detail}")
        self.status_code = status_code
        self.detail = detail
        self.code = code
        self.body = body


class Unauthorized(ApiError):
    """401: no key, or an unknown or revoked one."""


class NotFound(ApiError):
    """404: no such job, upload or artifact in this project."""


class Conflict(ApiError):
    """409: the job's state forbids the action, or an Idempotency-Key was reused with another
    spec (`job_id` then names the job the key belongs to)."""

    @property
    def job_id(self) -> str | None:
        return self.body.get("job_id") if isinstance(self.body, dict) else None


class InvalidRequest(ApiError):
    """400/413/415/422: the request (usually the spec) is wrong; `errors` name the fields."""

    def __init__(
        self,
        status_code: int,
        detail: str,
        code: str | None,
        body: Any = None,
        errors: list[FieldError] | None = None,
    ):
        super().__init__(status_code, detail, code, body)
        self.errors = errors or []

    def __str__(self) -> str:
        if not self.errors:
            return super().__str__()
        return "invalid request:\n" + "\n".join(f"  {e}" for e in self.errors)


class InvalidSpec(InvalidRequest):
    """The spec file could not be read, or names a local file that does not exist (found
    before anything was sent)."""

    def __init__(self, errors: list[FieldError]):
        super().__init__(0, "; ".join(map(str, errors)), "invalid_spec", errors=errors)


class ServerError(ApiError):
    """5xx: a fault on the server's side (the body has a reference for its log)."""


class WaitTimeout(DistilleryError, TimeoutError):
    """`Job.wait` ran out of time; the job itself keeps going on the server."""

    def __init__(self, job: Any, timeout: float):
        super().__init__(f"job {job.id} still {job.status} after {timeout:g} s")
        self.job = job
        self.timeout = timeout


class ChecksumMismatch(DistilleryError):
    """A downloaded file's sha256 differs from the server's ETag (the partial file is deleted,
    so the next try starts over)."""


def error_from_response(r: httpx.Response) -> ApiError:
    """The exception for an error response, with the server's own wording."""
    try:
        body: Any = r.json()
    except ValueError:
        body = r.text
    detail: str = r.reason_phrase or "error"
    code = None
    errors: list[FieldError] = []
    if isinstance(body, dict):
        code = body.get("code")
        raw = body.get("detail")
        if isinstance(raw, list):
            errors = [
                FieldError(str(e.get("loc", "?")), str(e.get("msg", "")))
                for e in raw
                if isinstance(e, dict)
            ]
            detail = body.get("message") or "; ".join(map(str, errors))
        elif raw:
            detail = str(raw)
    elif body:
        detail = str(body)[:500]
    status = r.status_code
    if status == 401:
        return Unauthorized(status, detail, code, body)
    if status == 404:
        return NotFound(status, detail, code, body)
    if status == 409:
        return Conflict(status, detail, code, body)
    if status in (400, 413, 415, 422):
        return InvalidRequest(status, detail, code, body, errors)
    if status >= 500:
        return ServerError(status, detail, code, body)
    return ApiError(status, detail, code, body)
