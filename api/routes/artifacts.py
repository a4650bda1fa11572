"""Exported students: list them and download one from the blob store.

Downloads are cache- and resume-friendly: the ETag is the file's sha256 (content-addressed, so
it never changes for a key), `If-None-Match` answers 304, and `Range` answers 206 (Starlette's
FileResponse does the range handling, including 416 for a range past the end).
"""

from __future__ import annotations

import re

from fastapi import APIRouter, Request, Response
from fastapi.responses import FileResponse

from api.deps import Blobs, DbSession, Owner, load_job
from api.errors import ApiError
from api.routes.jobs import NOT_FOUND
from api.schemas import ArtifactNotFoundOut, ArtifactOut
from store.models import Artifact

router = APIRouter(prefix="/v1/jobs", tags=["artifacts"])

DEFAULT_EXT = {
    "torchscript": "torchscript.pt",
    "torch_export": "pt2",
    "onnx": "onnx",
    "safetensors": "safetensors",
}


def download_name(job_name: str, artifact: Artifact) -> str:
    """`<job name>-student.<ext>`, safe in a header and on any filesystem."""
    stem = re.sub(r"[^A-Za-z0-9._-]+", "_", job_name).strip("._") or "job"
    _, dot, ext = artifact.filename.partition(".")
    ext = ext if dot and ext else DEFAULT_EXT.get(artifact.format, artifact.format)
    return f"{stem}-student.{ext}"


def etag_matches(header: str | None, etag: str) -> bool:
    """RFC 9110 weak comparison, as If-None-Match asks for."""
    if not header:
        return False
    tags = [t.strip() for t in header.split(",")]
    return "*" in tags or any(t.removeprefix("W/") == etag for t in tags)


@router.get(
    "/{job_id}/artifacts",
    response_model=list[ArtifactOut],
    summary="List a job's artifacts",
    responses=NOT_FOUND,
)
def list_artifacts(job_id: str, session: DbSession, owner: Owner) -> list[ArtifactOut]:
    """The exported students (one per format), with size, sha256 and download path. Empty
    until the job succeeds."""
    job = load_job(session, job_id, owner)
    return [ArtifactOut.of(a) for a in job.artifacts]


@router.head("/{job_id}/artifacts/{format}", include_in_schema=False)
@router.get(
    "/{job_id}/artifacts/{format}",
    response_class=FileResponse,
    summary="Download an artifact",
    responses={
        200: {
            "content": {
                "application/octet-stream": {"schema": {"type": "string", "format": "binary"}}
            },
            "description": "the whole file",
        },
        206: {"description": "the requested byte range (`Range: bytes=a-b` or `bytes=a-`)"},
        304: {"description": "`If-None-Match` matched the ETag (the sha256)"},
        404: {
            "model": ArtifactNotFoundOut,
            "description": "no such format (`available` lists the job's), no such job, or the "
            "file is missing",
        },
        416: {"description": "the range starts past the end of the file"},
    },
)
def download_artifact(
    job_id: str, format: str, request: Request, session: DbSession, owner: Owner, blobs: Blobs
) -> Response:
    """The student file in `format` (torchscript, torch_export, onnx, safetensors), as an
    attachment named `<job name>-student.<ext>`. Resumable with `Range`; `ETag` is the file's
    sha256, so `If-None-Match` saves a second download."""
    job = load_job(session, job_id, owner)
    artifact = next((a for a in job.artifacts if a.format == format), None)
    if artifact is None:
        available = [a.format for a in job.artifacts]
        hint = (
            f"available: {', '.join(available)}"
            if available
            else (f"the job has no artifacts yet (it is {job.status})")
        )
        raise ApiError(
            404,
            f"job {job_id!r} has no {format!r} artifact; {hint}",
            "not_found",
            available=available,
        )
    etag = f'"{artifact.sha256}"'
    if etag_matches(request.headers.get("if-none-match"), etag):
        return Response(status_code=304, headers={"ETag": etag})
    try:
        path = blobs.path(artifact.storage_key)
    except ValueError:  # a malformed key in the row: same as a missing file to the caller
        path = None
    if path is None or not path.is_file():
        raise ApiError(
            404,
            f"the file of job {job_id!r}'s {format!r} artifact is missing from the blob store; "
            "retry the job to export it again",
            "blob_missing",
        )
    return FileResponse(
        path,
        media_type="application/octet-stream",
        filename=download_name(job.name, artifact),
        headers={"ETag": etag, "Cache-Control": "private, max-age=0, must-revalidate"},
    )
