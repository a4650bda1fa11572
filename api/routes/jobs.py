"""Jobs: submit, list, inspect, cancel, retry."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Header, Query, Request, Response
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from api.deps import AppSettings, CeleryApp, DbSession, Owner, load_job, upload_owner
from api.dispatch import send
from api.errors import ApiError, FieldErrors
from api.json_body import read_json
from api.quotas import QUOTA_RESPONSES, enforce_job_quotas
from api.schemas import (
    ConflictOut,
    ErrorOut,
    JobDetail,
    JobPage,
    JobSummary,
    ValidationErrorOut,
)
from api.spec_schema import EXAMPLE
from api.submission import check_spec
from store import idempotency
from store.jobs import create_job, list_jobs, request_cancel, retry
from store.models import IdempotencyKey, Job, JobStatus
from store.quotas import lock_project

router = APIRouter(prefix="/v1/jobs", tags=["jobs"])

NOT_FOUND: dict[int | str, dict[str, Any]] = {
    404: {"model": ErrorOut, "description": "no such job"}
}


MAX_SPEC_BYTES = 1 << 20  # a spec is a few hundred bytes; files go through /v1/uploads


def _spec_too_large() -> ApiError:
    return ApiError(
        413,
        f"a job spec is at most {MAX_SPEC_BYTES} bytes; send files with POST /v1/uploads",
        "too_large",
    )


async def json_body(request: Request) -> Any:
    """The raw JSON body: the spec is validated by `parse_spec`, not by FastAPI, so its errors
    name spec fields (`method.name`) the same way `distill validate` does."""
    return await read_json(request, MAX_SPEC_BYTES, "the job spec", _spec_too_large())


SPEC_BODY: dict[str, Any] = {
    "requestBody": {
        "required": True,
        "description": "the job spec (the same document `distill run` takes, as JSON)",
        "content": {
            "application/json": {
                "schema": {"$ref": "#/components/schemas/JobSpec"},
                "example": EXAMPLE,
            }
        },
    }
}


CURSOR = Query(
    description="an opaque token: the `next_cursor` of the previous page, passed back as it "
    "came (URL-safe base64 of the last job's creation time and id; build none yourself: its "
    "content may change); without it, the first page",
    # documented, not enforced here: decode_cursor's 422 says what to send instead
    json_schema_extra={"pattern": "^[A-Za-z0-9_-]+$", "maxLength": 512},
)


IDEMPOTENCY_HEADER = Header(
    alias="Idempotency-Key",
    # documented, not enforced here: idempotency.key_problem's 422 says what is wrong
    json_schema_extra={
        "minLength": 1,
        "maxLength": idempotency.MAX_KEY_LENGTH,
        "pattern": "^[ -~]+$",  # printable ASCII
    },
    description="any unique string (a UUID, a CI pipeline id): a request repeated with the same "
    "key and spec returns the first request's job (200) instead of starting another; the same "
    "key with a different spec is a 409",
)


def _replay(record: IdempotencyKey, digest: str, session: Session, response: Response) -> JobDetail:
    """The job a reused key stands for, or a 409 when the key came with another spec."""
    if record.request_sha256 != digest:
        raise ApiError(
            409,
            f"Idempotency-Key {record.key!r} was already used for job {record.job_id} with a "
            "different spec; send a new key to submit a new job",
            "idempotency_conflict",
            job_id=record.job_id,
        )
    job = session.get(Job, record.job_id)
    if job is None:  # pragma: no cover - the key row goes with its job (ON DELETE CASCADE)
        raise ApiError(409, "the job of this Idempotency-Key no longer exists", "gone")
    response.status_code = 200
    response.headers["Idempotent-Replayed"] = "true"
    return JobDetail.of(job)


@router.post(
    "",
    status_code=201,
    response_model=JobDetail,
    summary="Submit a job",
    openapi_extra=SPEC_BODY,
    responses={
        200: {
            "model": JobDetail,
            "description": "the Idempotency-Key was used before with the same spec: that job "
            "(header `Idempotent-Replayed: true`); nothing new is started",
        },
        409: {
            "model": ErrorOut,
            "description": "the Idempotency-Key was used before with a different spec",
        },
        422: {
            "model": ValidationErrorOut,
            "description": "the spec is invalid, names a local path or a missing upload, "
            "names as `job:<id>` a job that is missing, not succeeded or without safetensors "
            "weights, or asks for more runtime than allowed",
        },
        **QUOTA_RESPONSES,
    },
)
def submit_job(
    payload: Annotated[Any, Depends(json_body)],
    session: DbSession,
    owner: Owner,
    settings: AppSettings,
    celery: CeleryApp,
    response: Response,
    idempotency_key: Annotated[str | None, IDEMPOTENCY_HEADER] = None,
) -> JobDetail:
    """Validate the spec, store the job as `queued` and hand its id to the workers.

    Files are referenced as `upload:<id>` (see `POST /v1/uploads`); server-side paths are
    refused. `student.checkpoint` may also be `job:<id>`: the student starts from the
    safetensors weights of that earlier job (of this project, succeeded, exported with
    safetensors), e.g. to fine-tune it (GPD `scenario: finetune`).

    If the broker is unreachable the job is still created (201) and stays queued; an event of
    kind `broker` says so, and the service enqueues it again once the broker is back.

    With an `Idempotency-Key` header, retrying a request whose answer was lost is safe: the
    same key and spec (compared after defaults are filled in) give back the first job with
    status 200, the same key with another spec is a 409. Keys are per project.
    """
    if idempotency_key is not None and (problem := idempotency.key_problem(idempotency_key)):
        raise FieldErrors([("header.Idempotency-Key", problem)])
    lock_project(session, owner)  # one submission of a project at a time: quotas, deletions
    spec = check_spec(payload, session, owner, settings)
    key_owner = upload_owner(owner)
    digest = idempotency.request_digest(spec)
    if idempotency_key is not None:
        record = idempotency.find(session, key_owner, idempotency_key)
        if record is not None:
            return _replay(record, digest, session, response)
    enforce_job_quotas(session, owner, settings)
    job = create_job(session, spec, owner=owner)
    if idempotency_key is not None:
        idempotency.remember(session, key_owner, idempotency_key, digest, job.id)
    try:
        session.commit()
    except IntegrityError:  # a concurrent request with the same key won the race
        session.rollback()
        record = idempotency.find(session, key_owner, idempotency_key or "")
        if record is None:
            raise
        return _replay(record, digest, session, response)
    send(session, job, celery, settings)
    return JobDetail.of(job)


@router.get(
    "",
    response_model=JobPage,
    summary="List jobs",
    responses={422: {"model": ValidationErrorOut, "description": "bad status or cursor"}},
)
def get_jobs(
    session: DbSession,
    owner: Owner,
    status: Annotated[JobStatus | None, Query(description="only jobs in this state")] = None,
    name: Annotated[str | None, Query(description="only jobs with exactly this name")] = None,
    limit: Annotated[int, Query(ge=1, le=200, description="page size")] = 50,
    cursor: Annotated[str | None, CURSOR] = None,
) -> JobPage:
    """Newest first. Page with `cursor`: the listing is keyed on (created_at, id), so jobs
    submitted while you page never shift or repeat what you have seen."""
    try:
        jobs, next_cursor = list_jobs(
            session, status=status, name=name, owner=owner, limit=limit, cursor=cursor
        )
    except ValueError as exc:
        raise FieldErrors([("query.cursor", str(exc))]) from None
    return JobPage(
        items=[JobSummary.model_validate(j) for j in jobs],
        next_cursor=next_cursor,
    )


@router.get("/{job_id}", response_model=JobDetail, summary="Get a job", responses=NOT_FOUND)
def get_job(job_id: str, session: DbSession, owner: Owner) -> JobDetail:
    """State, progress, stage and epoch, attempts, timestamps, the error if it failed, and once
    it succeeded its evaluation (accuracy gap, sizes, latency) and artifacts."""
    return JobDetail.of(load_job(session, job_id, owner))


@router.post(
    "/{job_id}/cancel", response_model=JobDetail, summary="Cancel a job", responses=NOT_FOUND
)
def cancel_job(job_id: str, session: DbSession, owner: Owner) -> JobDetail:
    """A queued job is cancelled at once; a running one moves to `cancelling` and stops at the
    next batch. A finished job is returned unchanged (cancel is idempotent)."""
    job = load_job(session, job_id, owner, lock=True)
    request_cancel(session, job)
    session.commit()
    return JobDetail.of(job)


@router.post(
    "/{job_id}/retry",
    response_model=JobDetail,
    summary="Retry a failed or cancelled job",
    responses={
        **NOT_FOUND,
        409: {"model": ConflictOut, "description": "the job is not failed or cancelled"},
        **QUOTA_RESPONSES,
    },
)
def retry_job(
    job_id: str, session: DbSession, owner: Owner, settings: AppSettings, celery: CeleryApp
) -> JobDetail:
    """Put a failed or cancelled job back in the queue as a new attempt (`attempts` goes up when
    a worker picks it up; it resumes from its last checkpoint). Any other state is a 409 that
    names the current state. A project at one of its quotas gets a 429."""
    lock_project(session, owner)
    job = load_job(session, job_id, owner, lock=True)
    if job.status in (JobStatus.failed, JobStatus.cancelled):
        enforce_job_quotas(session, owner, settings)
    retry(session, job)
    session.commit()
    send(session, job, celery, settings)
    return JobDetail.of(job)
