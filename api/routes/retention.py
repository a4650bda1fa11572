"""Deleting a project's jobs and uploads, with their files (store/retention.py decides what
may go: never a job that has not ended, nor anything a queued or running job names)."""

from __future__ import annotations

from typing import Any, Literal

from fastapi import APIRouter
from pydantic import BaseModel, Field

from api.deps import AppSettings, Blobs, DbSession, Owner, load_job, upload_owner
from api.errors import ApiError, not_found
from api.schemas import ConflictOut, ErrorOut
from store.models import Upload
from store.quotas import lock_project
from store.retention import Deleted, InUse, JobNotFinished, delete_job, delete_upload

router = APIRouter()


class DeletedOut(BaseModel):
    """What a deletion removed."""

    id: str
    kind: Literal["job", "upload"]
    files_deleted: int = Field(..., description="stored files deleted (artifacts, the upload)")
    bytes_freed: int = Field(..., description="their bytes, and the checkpoints'")
    files_shared: int = Field(
        ..., description="files kept because another job or upload has the same bytes"
    )
    files_recent: int = Field(
        ...,
        description="files kept because their bytes were stored again in the last "
        "DISTILLERY_GC_GRACE_SECONDS; the next `distill gc` deletes those no row names",
    )

    @classmethod
    def of(cls, ident: str, kind: Literal["job", "upload"], d: Deleted) -> DeletedOut:
        return cls(
            id=ident,
            kind=kind,
            files_deleted=d.blobs,
            bytes_freed=d.bytes,
            files_shared=d.shared,
            files_recent=d.recent,
        )


def _in_use(exc: InUse) -> ApiError:
    return ApiError(409, str(exc), "in_use", used_by=exc.used_by)


IN_USE: dict[str, Any] = {
    "model": ErrorOut,
    "description": "a queued or running job names it (code `in_use`, `used_by` lists them)",
}


@router.delete(
    "/v1/jobs/{job_id}",
    response_model=DeletedOut,
    tags=["jobs"],
    summary="Delete a job and its files",
    responses={
        404: {"model": ErrorOut, "description": "no such job"},
        409: {
            "model": ConflictOut,
            "description": "the job is queued, running or cancelling (cancel it first), or a "
            "queued or running job names it as `job:<id>` (code `in_use`)",
        },
    },
)
def remove_job(
    job_id: str, session: DbSession, owner: Owner, settings: AppSettings, blobs: Blobs
) -> DeletedOut:
    """Delete a job that has ended (succeeded, failed or cancelled): its record, events,
    metrics, evaluation and artifacts, its checkpoints, and the artifacts' files unless another
    job or upload has the same bytes. A job that has not ended is a 409 (cancel it first)."""
    lock_project(session, owner)
    job = load_job(session, job_id, owner, lock=True)
    try:
        deleted = delete_job(session, blobs, job, settings)
    except JobNotFinished as exc:
        raise ApiError(409, str(exc), "illegal_transition", status=exc.status) from None
    except InUse as exc:
        raise _in_use(exc) from None
    return DeletedOut.of(job_id, "job", deleted)


@router.delete(
    "/v1/uploads/{upload_id}",
    response_model=DeletedOut,
    tags=["uploads"],
    summary="Delete an upload and its file",
    responses={404: {"model": ErrorOut, "description": "no such upload"}, 409: IN_USE},
)
def remove_upload(
    upload_id: str, session: DbSession, owner: Owner, settings: AppSettings, blobs: Blobs
) -> DeletedOut:
    """Delete an upload and, unless another upload or artifact has the same bytes, its file.
    Jobs that ran with it keep their results. A queued or running job that names it is a 409."""
    lock_project(session, owner)
    upload = session.get(Upload, upload_id)
    if upload is None or upload.owner != upload_owner(owner):
        raise not_found("upload", upload_id)
    try:
        deleted = delete_upload(session, blobs, upload, settings)
    except InUse as exc:
        raise _in_use(exc) from None
    return DeletedOut.of(upload_id, "upload", deleted)
