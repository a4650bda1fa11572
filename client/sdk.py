"""The Python SDK: submit a spec, follow the job, gate on its numbers, download the student.

    from client.sdk import Distillery

    with Distillery("http://distillery:8000", token) as d:      # or DISTILLERY_URL / _TOKEN
        job = d.submit("examples/digits-kd.yaml").wait(timeout=3600)
        if job.status == "succeeded" and job.evaluation.gap <= 3.0:
            job.download("onnx", "dist/")

`submit` uploads the local files a spec names (skipping those the server already has, by
sha256) and always sends an `Idempotency-Key` (a fresh one unless given), so its own retries
after a lost answer can never start a second training. Reads are retried on connection errors
and 502/503/504. HTTP errors raise the classes in client/errors.py. `distill` is built on this.
"""

from __future__ import annotations

import hashlib
import os
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, fields
from datetime import datetime
from pathlib import Path
from typing import Any, TypeVar

import httpx

from client.download import Download, fetch
from client.errors import (
    ApiError,
    ChecksumMismatch,
    Conflict,
    DistilleryError,
    FieldError,
    InvalidRequest,
    InvalidSpec,
    NotFound,
    ServerError,
    ServiceUnavailable,
    Unauthorized,
    WaitTimeout,
    error_from_response,
)
from client.specfile import Kind, local_files, read_spec, with_uploads
from client.sse import events as sse_events
from kdcore.report import Evaluation

__all__ = [
    "ApiError",
    "Artifact",
    "ChecksumMismatch",
    "Conflict",
    "Distillery",
    "DistilleryError",
    "Download",
    "Evaluation",
    "Event",
    "FieldError",
    "InvalidRequest",
    "InvalidSpec",
    "Job",
    "NotFound",
    "ServerError",
    "ServiceUnavailable",
    "Unauthorized",
    "Upload",
    "WaitTimeout",
]

DEFAULT_URL = "http://127.0.0.1:8000"
TERMINAL = frozenset({"succeeded", "failed", "cancelled"})
RETRY_STATUS = frozenset({502, 503, 504})

T = TypeVar("T")


def _build(cls: type[T], data: dict[str, Any]) -> T:
    """A dataclass from an API object, ignoring keys this client does not know (newer
    servers may add some)."""
    names = {f.name for f in fields(cls)}  # type: ignore[arg-type]
    return cls(**{k: v for k, v in data.items() if k in names})


def _time(value: str | None) -> datetime | None:
    return datetime.fromisoformat(value) if value else None


@dataclass(frozen=True)
class Artifact:
    format: str
    filename: str
    sha256: str
    size_bytes: int
    max_abs_diff: float
    download_url: str


@dataclass(frozen=True)
class Event:
    id: int
    at: str
    kind: str  # status, message, broker, gate, webhook, ...
    message: str
    status: str | None = None
    data: dict[str, Any] | None = None


@dataclass(frozen=True)
class Upload:
    id: str
    kind: str
    filename: str
    sha256: str
    size_bytes: int
    ref: str  # "upload:<id>", what a spec names


class Job:
    """A job on the server. Attributes reflect the last fetch: `refresh()` or `wait()` update
    them; `metrics()`, `events()` and `report()` always ask the server."""

    def __init__(self, client: Distillery, data: dict[str, Any], *, replayed: bool = False):
        self._client = client
        self.data = data
        self.replayed = replayed  # submit returned an existing job for its Idempotency-Key

    def __repr__(self) -> str:
        return f"<Job {self.id} {self.name!r} {self.status}>"

    # --- state --------------------------------------------------------------------------------

    @property
    def id(self) -> str:
        return str(self.data["id"])

    @property
    def name(self) -> str:
        return str(self.data["name"])

    @property
    def status(self) -> str:
        return str(self.data["status"])

    @property
    def progress(self) -> float:
        return float(self.data.get("progress") or 0.0)

    @property
    def stage(self) -> str | None:
        return self.data.get("stage")

    @property
    def current_epoch(self) -> int | None:
        return self.data.get("current_epoch")

    @property
    def attempts(self) -> int:
        return int(self.data.get("attempts") or 0)

    @property
    def error_code(self) -> str | None:
        return self.data.get("error_code")

    @property
    def error_message(self) -> str | None:
        return self.data.get("error_message")

    @property
    def created_at(self) -> datetime | None:
        return _time(self.data.get("created_at"))

    @property
    def finished_at(self) -> datetime | None:
        return _time(self.data.get("finished_at"))

    @property
    def spec(self) -> dict[str, Any]:
        return dict(self.data.get("spec") or {})

    @property
    def finished(self) -> bool:
        return self.status in TERMINAL

    @property
    def evaluation(self) -> Evaluation | None:
        ev = self.data.get("evaluation")
        return Evaluation.model_validate(ev) if ev else None

    @property
    def artifacts(self) -> list[Artifact]:
        return [_build(Artifact, a) for a in self.data.get("artifacts") or []]

    # --- following ----------------------------------------------------------------------------

    def refresh(self) -> Job:
        self.data = self._client._json("GET", f"/v1/jobs/{self.id}")
        return self

    def wait(
        self,
        timeout: float | None = None,
        poll: float = 2.0,
        on_update: Callable[[Job], None] | None = None,
    ) -> Job:
        """Poll until the job succeeds, fails or is cancelled; `on_update` sees every fetch.
        Raises WaitTimeout after `timeout` seconds (the job keeps running)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            self.refresh()
            if on_update is not None:
                on_update(self)
            if self.finished:
                return self
            if deadline is not None:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise WaitTimeout(self, timeout or 0.0)
                time.sleep(min(poll, left))
            else:
                time.sleep(poll)

    def stream(self) -> Iterator[tuple[str, dict[str, Any]]]:
        """Server-Sent Events of the job: ("job", summary) on every change, then ("done",
        summary) when it finishes (the iterator ends there)."""
        with self._client._http.stream(
            "GET", f"/v1/jobs/{self.id}/stream", timeout=httpx.Timeout(30.0, read=None)
        ) as r:
            if r.status_code != 200:
                r.read()
                raise error_from_response(r)
            for name, data in sse_events(r.iter_lines()):
                if isinstance(data, dict) and name in ("job", "done"):
                    self.data = {**self.data, **data}
                yield name, data
                if name in ("done", "error"):
                    return

    def events(self, after: int | None = None) -> list[Event]:
        params = {"after": after} if after is not None else None
        body = self._client._json("GET", f"/v1/jobs/{self.id}/events", params=params)
        return [_build(Event, e) for e in body["items"]]

    def metrics(self) -> dict[str, dict[str, list[tuple[int, float]]]]:
        """stage → metric → [(epoch, value), ...], e.g. `metrics()["distill"]["val_acc"]`."""
        series = self._client._json("GET", f"/v1/jobs/{self.id}/metrics")["series"]
        return {
            stage: {name: [(int(e), float(v)) for e, v in points] for name, points in by.items()}
            for stage, by in series.items()
        }

    def report(self) -> dict[str, Any]:
        """The full evaluation report (the `report.json` of `distill run`)."""
        return dict(self._client._json("GET", f"/v1/jobs/{self.id}/report")["report"])

    # --- actions ------------------------------------------------------------------------------

    def cancel(self) -> Job:
        self.data = self._client._json("POST", f"/v1/jobs/{self.id}/cancel")
        return self

    def retry(self) -> Job:
        self.data = self._client._json("POST", f"/v1/jobs/{self.id}/retry")
        return self

    def delete(self) -> dict[str, Any]:
        """Delete the job with its artifacts and checkpoints (their files too, unless another
        job or upload has the same bytes); returns what was freed. A job that has not ended
        raises Conflict: cancel it first. A second delete of the same job raises NotFound."""
        return dict(self._client._json("DELETE", f"/v1/jobs/{self.id}"))

    def artifact(self, format: str) -> Artifact:
        """The artifact in `format`, fetching the job again if it is not known yet."""
        for refresh in (False, True):
            if refresh:
                self.refresh()
            for a in self.artifacts:
                if a.format == format:
                    return a
        have = ", ".join(a.format for a in self.artifacts) or f"none (the job is {self.status})"
        raise NotFound(404, f"job {self.id} has no {format!r} artifact; it has: {have}", None)

    def download(self, format: str = "onnx", path: str | Path | None = None) -> Download:
        """Download the student in `format` to `path` (a file, or a folder to put the server's
        file name in; default the current folder). Verifies the sha256 (the ETag); an
        interrupted download resumes from its `.part` file, in this call or the next."""
        artifact = self.artifact(format)
        target = Path(path) if path is not None else Path.cwd()
        if target.is_dir() or (path is not None and str(path).endswith(("/", os.sep))):
            target = target / self._client._download_name(artifact)
        return fetch(
            self._client._http,
            artifact.download_url,
            target,
            artifact.sha256,
            on_error=error_from_response,
        )


class Distillery:
    """A connection to one Distillery service with one API key (a project's)."""

    def __init__(
        self,
        url: str | None = None,
        token: str | None = None,
        *,
        timeout: float = 30.0,
        retries: int = 3,
        transport: httpx.BaseTransport | None = None,
    ):
        self.url = (url or os.environ.get("DISTILLERY_URL") or DEFAULT_URL).rstrip("/")
        token = token if token is not None else os.environ.get("DISTILLERY_TOKEN")
        headers = {"User-Agent": "distillery-sdk/0.1"}
        if token:
            headers["Authorization"] = f"Bearer {token}"
        self.retries = retries
        self._http = httpx.Client(
            base_url=self.url, headers=headers, timeout=timeout, transport=transport
        )

    def __enter__(self) -> Distillery:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._http.close()

    # --- HTTP ---------------------------------------------------------------------------------

    def _request(
        self,
        method: str,
        path: str,
        *,
        files: Callable[[], dict[str, Any]] | None = None,
        **kwargs: Any,
    ) -> httpx.Response:
        """One call, retried on connection errors and 502/503/504. Every call this client
        makes is harmless to repeat: submit carries an Idempotency-Key, an upload is
        deduplicated by the server, a repeated cancel changes nothing and a repeated retry is
        refused (409) rather than run twice. `files` builds the multipart files for each try
        (a file object must be rewound)."""
        delay = 0.5
        for attempt in range(self.retries + 1):
            last = attempt == self.retries
            try:
                if files is not None:
                    kwargs["files"] = files()
                r = self._http.request(method, path, **kwargs)
            except httpx.TransportError as exc:
                if last:
                    raise ServiceUnavailable(
                        f"cannot reach Distillery at {self.url} ({type(exc).__name__}: {exc}); "
                        "check --server / DISTILLERY_URL"
                    ) from exc
            else:
                if r.status_code not in RETRY_STATUS or last:
                    if r.status_code >= 400:
                        raise error_from_response(r)
                    return r
            time.sleep(delay)
            delay *= 2
        raise AssertionError("unreachable")  # pragma: no cover

    def _json(self, method: str, path: str, **kwargs: Any) -> Any:
        return self._request(method, path, **kwargs).json()

    def _download_name(self, artifact: Artifact) -> str:
        """The server's file name for an artifact (Content-Disposition of a HEAD request)."""
        r = self._request("HEAD", artifact.download_url)
        disposition = r.headers.get("content-disposition", "")
        for part in disposition.split(";"):
            key, _, value = part.strip().partition("=")
            if key == "filename" and value:
                return Path(value.strip('"')).name
        return artifact.filename

    # --- jobs ---------------------------------------------------------------------------------

    def submit(
        self,
        spec: dict[str, Any] | str | Path,
        *,
        idempotency_key: str | None = None,
        base_dir: str | Path | None = None,
    ) -> Job:
        """Submit a spec (a dict, or a YAML/JSON file). Local files it names are uploaded
        first (relative paths from the spec file's folder, or `base_dir`, default the current
        folder) and replaced by their `upload:<id>`.

        With the same `idempotency_key` (per project) the server returns the job the key was
        first used for (`job.replayed` is then True) and starts nothing; the same key with a
        different spec raises Conflict. Without one, a fresh key still guards this call's own
        retries."""
        if isinstance(spec, str | Path):
            data = read_spec(spec)
            base = Path(base_dir) if base_dir is not None else Path(spec).resolve().parent
        else:
            data = dict(spec)
            base = Path(base_dir) if base_dir is not None else Path.cwd()
        refs = {f.loc: self.upload(f.path, f.kind).ref for f in local_files(data, base)}
        body = with_uploads(data, refs) if refs else data
        key = idempotency_key or uuid.uuid4().hex
        r = self._request("POST", "/v1/jobs", json=body, headers={"Idempotency-Key": key})
        return Job(self, r.json(), replayed=r.status_code == 200)

    def job(self, job_id: str) -> Job:
        return Job(self, self._json("GET", f"/v1/jobs/{job_id}"))

    def jobs(
        self, *, status: str | None = None, name: str | None = None, limit: int = 50
    ) -> list[Job]:
        """This project's jobs, newest first, at most `limit` (following the server's pages)."""
        out: list[Job] = []
        cursor = None
        while len(out) < limit:
            params: dict[str, Any] = {"limit": min(200, limit - len(out))}
            if status:
                params["status"] = status
            if name:
                params["name"] = name
            if cursor:
                params["cursor"] = cursor
            page = self._json("GET", "/v1/jobs", params=params)
            out.extend(Job(self, item) for item in page["items"])
            cursor = page.get("next_cursor")
            if not cursor:
                break
        return out

    # --- uploads ------------------------------------------------------------------------------

    def find_upload(self, sha256: str, kind: Kind | None = None) -> Upload | None:
        """An upload of this project with these bytes, if there is one."""
        params = {"sha256": sha256, **({"kind": kind} if kind else {})}
        items = self._json("GET", "/v1/uploads", params=params)["items"]
        return _build(Upload, items[0]) if items else None

    def delete_upload(self, upload_id: str) -> dict[str, Any]:
        """Delete an upload (and its file, unless another upload or artifact has the same
        bytes); returns what was freed. Conflict while a queued or running job names it."""
        return dict(self._json("DELETE", f"/v1/uploads/{upload_id}"))

    def upload(self, path: str | Path, kind: Kind) -> Upload:
        """Upload a file (kind "model" or "dataset"), unless this project already has its
        bytes: then the existing upload is returned and nothing is sent. A dataset stored under
        a name whose suffix differs is sent again: the server then takes this file's name (its
        format) or answers 409 when the formats conflict."""
        path = Path(path)
        digest = hashlib.sha256()
        with path.open("rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                digest.update(block)
        existing = self.find_upload(digest.hexdigest(), kind)
        same_format = existing is not None and (
            kind == "model" or Path(existing.filename).suffix.lower() == path.suffix.lower()
        )
        if existing is not None and same_format:
            return existing
        with path.open("rb") as f:

            def rewound() -> dict[str, Any]:
                f.seek(0)
                return {"file": (path.name, f, "application/octet-stream")}

            r = self._request("POST", "/v1/uploads", files=rewound, data={"kind": kind})
        return _build(Upload, r.json())
