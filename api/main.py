"""The FastAPI app: `create_app(settings)` builds one; `uvicorn api.main:app` serves the default.

`app` is built on first access (a module `__getattr__`), so importing this module touches no
database, folder or broker; `uvicorn api.main:app` and `from api.main import app` both work.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import Depends, FastAPI
from fastapi.openapi.utils import get_openapi
from sqlalchemy.orm import sessionmaker

from api import errors
from api.deps import current_owner
from api.routes import artifacts, events, health, jobs, metrics, retention, uploads
from api.schemas import ErrorOut, FieldError, ValidationErrorOut
from api.spec_schema import registry_spec_schemas
from store.blobs import BlobStore
from store.db import make_engine, upgrade_schema
from store.queue import make_celery
from store.settings import Settings, get_settings

DESCRIPTION = """\
Distillery compresses a teacher model into a smaller student by knowledge distillation.

1. Upload files the spec refers to: `POST /v1/uploads` (`kind` = model or dataset) gives an id;
   refer to it in the spec as `upload:<id>`. A student may also start from an earlier job's
   student: `student.checkpoint: job:<id>` (a succeeded job of yours that exported safetensors).
2. Submit the spec: `POST /v1/jobs`. A worker picks the job up.
3. Follow it: `GET /v1/jobs/{id}`, `GET /v1/jobs/{id}/stream` (Server-Sent Events),
   `/events`, `/metrics`.
4. Download the student: `GET /v1/jobs/{id}/artifacts/{format}`.

Every `/v1` request carries an API key: `Authorization: Bearer <key>` (an admin creates keys
with `distill keys create --project NAME`). A key sees only its project's jobs and uploads;
anything else is 404. A missing, unknown, revoked or expired key is 401; a read-only key gets
403 for anything but GET and HEAD. Too many requests, or a job or upload over one of the
project's quotas, is 429 with `Retry-After`.

Errors are JSON: `detail` says what is wrong and how to fix it; a 422 lists `{loc, msg}` per
field, with `loc` a dotted spec path such as `method.name`.
"""

log = logging.getLogger("distillery.api")

TAGS = [
    {"name": "jobs", "description": "Submit, list, inspect, cancel and retry distillation jobs."},
    {"name": "events", "description": "A job's event log and live progress stream."},
    {"name": "metrics", "description": "Per-epoch training curves and the evaluation report."},
    {"name": "artifacts", "description": "The exported students, ready to download."},
    {"name": "uploads", "description": "Teacher/student weights and datasets for specs."},
    {"name": "health", "description": "Liveness and readiness probes."},
]

UNAUTHORIZED: dict[int | str, dict[str, Any]] = {
    401: {"model": ErrorOut, "description": "no API key, or an unknown, revoked or expired one"},
    403: {"model": ErrorOut, "description": "a read-only key asked to change something"},
    429: {"model": ErrorOut, "description": "too many requests or over a quota; Retry-After"},
}

# Publishing to a broker that is down should fail fast: the job is safe in the database and
# the reconciler enqueues it later, while a hanging request helps nobody.
PUBLISH_RETRY = {"max_retries": 2, "interval_start": 0, "interval_step": 0.2, "interval_max": 0.5}


def create_app(settings: Settings | None = None) -> FastAPI:
    """A complete app with its own engine, blob store and Celery (sending only) client."""
    settings = settings or get_settings()
    url = settings.resolved_database_url
    if url.startswith("sqlite"):  # embedded mode: works out of the box
        upgrade_schema(url)
    engine = make_engine(url)
    celery = make_celery(settings)
    celery.conf.task_publish_retry_policy = PUBLISH_RETRY

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        yield
        # close(), not pool.force_close_all(): kombu shares connection pools per broker URL
        # across apps in a process, and closing it would break every other app on that URL.
        celery.close()
        engine.dispose()

    app = FastAPI(
        title="Distillery",
        version="0.1.0",
        summary="Knowledge distillation as a service",
        description=DESCRIPTION,
        openapi_tags=TAGS,
        lifespan=lifespan,
    )
    app.state.settings = settings
    app.state.engine = engine
    # not store.db.session_factory: its cache would keep every app's engine alive
    app.state.sessions = sessionmaker(engine, expire_on_commit=False)
    app.state.blobs = BlobStore(settings.resolved_blob_dir)
    app.state.celery = celery
    app.state.stream_poll_s = 0.5
    app.state.stream_keepalive_s = 15.0

    errors.install(app)
    # authenticated before anything else about the request is looked at (a body, a job id)
    for module in (jobs, events, metrics, artifacts, uploads, retention):
        app.include_router(
            module.router, dependencies=[Depends(current_owner)], responses=UNAUTHORIZED
        )
    app.include_router(health.router)
    if settings.auth == "none":
        log.warning(
            "DISTILLERY_AUTH=none: the API accepts requests without keys; anyone who can reach "
            "it can read, submit and cancel every job"
        )
    app.openapi = lambda: _openapi(app)  # type: ignore[method-assign]
    return app


def _openapi(app: FastAPI) -> dict[str, Any]:
    """FastAPI's document plus the JobSpec schema: the submit route reads its body itself (so
    spec errors use the spec's own field paths), and FastAPI cannot see the model there. The
    schema names the architectures and methods registered in this process (api/spec_schema.py),
    so it is built on the first request for the document, not when the module is imported."""
    if app.openapi_schema is None:
        doc = get_openapi(
            title=app.title,
            version=app.version,
            summary=app.summary,
            description=app.description,
            routes=app.routes,
            tags=app.openapi_tags,
        )
        spec = registry_spec_schemas(app.state.settings.max_job_runtime_s)
        schemas = doc.setdefault("components", {}).setdefault("schemas", {})
        if clash := set(spec) & set(schemas):
            raise RuntimeError(f"spec schemas would replace response schemas: {sorted(clash)}")
        schemas.update(spec)
        _use_our_422(doc)
        app.openapi_schema = doc
    return app.openapi_schema


def _use_our_422(doc: dict[str, Any]) -> None:
    """FastAPI documents its own 422 body; errors.py answers with `ValidationErrorOut`."""
    ours = {"$ref": "#/components/schemas/ValidationErrorOut"}
    schemas = doc["components"]["schemas"]
    schemas.setdefault(
        "ValidationErrorOut",
        ValidationErrorOut.model_json_schema(ref_template="#/components/schemas/{model}"),
    )
    schemas.setdefault("FieldError", FieldError.model_json_schema())
    for ops in doc.get("paths", {}).values():
        for op in ops.values():
            content = op.get("responses", {}).get("422", {}).get("content", {})
            if "application/json" in content:
                content["application/json"]["schema"] = ours
    for unused in ("HTTPValidationError", "ValidationError"):
        schemas.pop(unused, None)


app: FastAPI  # declared only: the first `api.main.app` goes through __getattr__ below


def __getattr__(name: str) -> Any:
    """`api.main.app`, built from the environment's settings on first use."""
    if name == "app":
        global app
        app = create_app()
        return app
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
