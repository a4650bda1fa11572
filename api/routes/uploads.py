"""Uploads: the only way a spec sent to the service can name a file (`upload:<id>`).

Files go straight from the request into the content-addressed blob store (see api/multipart.py),
with the size limit enforced twice: up front from Content-Length, and while streaming (a client
may send no length, or a wrong one). The same bytes uploaded again with the same kind by the same
owner give back the first upload: 201 when a new upload was made, 200 when an existing one is
returned (for a dataset, with the format the new name or `format` field gives it when it had
none: api/upload_names.py).
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

import anyio
from fastapi import APIRouter, Query, Request, Response
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker
from starlette.requests import ClientDisconnect

from api.deps import AppSettings, Blobs, DbSession, Owner, upload_owner
from api.errors import ApiError, FieldErrors, not_found
from api.multipart import FormError, FormReader, boundary_of
from api.quotas import enforce_upload_quota
from api.schemas import ErrorOut, UploadList, UploadOut, ValidationErrorOut
from api.upload_names import DATASET_FORMATS, check_format, renamed, stored_name
from store.blobs import BlobStore, TooLarge
from store.models import Upload

router = APIRouter(prefix="/v1/uploads", tags=["uploads"])

KINDS = ("model", "dataset")
# Content-Length counts the multipart envelope too (boundaries, part headers, the kind field);
# allow this much of it before refusing a request whose file may still be within the limit.
ENVELOPE_SLACK = 64 * 1024

UPLOAD_BODY: dict[str, Any] = {
    "requestBody": {
        "required": True,
        "content": {
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "required": ["file", "kind"],
                    "properties": {
                        "file": {"type": "string", "format": "binary"},
                        "kind": {
                            "type": "string",
                            "enum": list(KINDS),
                            "description": "model (teacher/student weights, TorchScript, ONNX) "
                            "or dataset (.npz, .pt, .pth, .csv)",
                        },
                        "format": {
                            "type": "string",
                            "enum": list(DATASET_FORMATS),
                            "description": "datasets only: the file's format, when its name "
                            "lacks the suffix (it is added to the stored name, which is how "
                            "the worker picks the reader)",
                        },
                    },
                }
            }
        },
    }
}


def _too_large(limit: int) -> ApiError:
    return ApiError(
        413,
        f"the file is larger than this service's upload limit of {limit} bytes",
        "too_large",
        limit_bytes=limit,
    )


def _check_kind(kind: str) -> str:
    if kind not in KINDS:
        raise FieldErrors([("kind", f"{kind!r} is not a kind; use model or dataset")])
    return kind


def _find(session: Session, owner: str, kind: str, sha256: str) -> Upload | None:
    return session.scalars(
        select(Upload).where(Upload.owner == owner, Upload.kind == kind, Upload.sha256 == sha256)
    ).first()


def _receive(
    reader: FormReader,
    blobs: BlobStore,
    limit: int,
    sessions: sessionmaker[Session],
    owner: str,
) -> tuple[Upload, bool]:
    """Blocking part of an upload (runs in a worker thread): stream, store, record."""
    reader.read_until_file()
    if "kind" in reader.fields:  # sent before the file: refuse before storing anything
        check_format(_check_kind(reader.fields["kind"]), reader.fields.get("format"))
    try:
        sha256, size = blobs.put_stream(reader.file_chunks(), limit=limit)
    except TooLarge:
        raise _too_large(limit) from None
    reader.read_rest()
    if "kind" not in reader.fields:
        raise FieldErrors([("kind", "missing; send kind=model or kind=dataset with the file")])
    kind = _check_kind(reader.fields["kind"])
    name = stored_name(reader.filename or "upload", check_format(kind, reader.fields.get("format")))
    with sessions() as session:
        existing = _find(session, owner, kind, sha256)
        if existing is not None:
            return _reuse(session, existing, name), False
        upload = Upload(
            owner=owner,
            kind=kind,
            filename=name,
            sha256=sha256,
            size_bytes=size,
        )
        session.add(upload)
        try:
            session.commit()
        except IntegrityError:  # the same file uploaded concurrently: return the winner
            session.rollback()
            existing = _find(session, owner, kind, sha256)
            if existing is None:
                raise
            return _reuse(session, existing, name), False
        return upload, True


def _reuse(session: Session, upload: Upload, name: str) -> Upload:
    """The upload these bytes already are, renamed when `name` gives it the format it lacked
    (a 409 when `name` asks for another one: api/upload_names.py)."""
    new_name = renamed(upload.kind, upload.id, upload.filename, name)
    if new_name is not None:
        upload.filename = new_name
        session.commit()
    return upload


@router.post(
    "",
    status_code=201,
    response_model=UploadOut,
    summary="Upload a model or dataset file",
    openapi_extra=UPLOAD_BODY,
    responses={
        200: {
            "model": UploadOut,
            "description": "the same file was uploaded before: that upload (renamed when this "
            "name or format gives a dataset the format its name lacked)",
        },
        409: {
            "model": ErrorOut,
            "description": "these bytes are already a dataset upload in another format "
            "(`upload_id`, `filename` name it)",
        },
        413: {"model": ErrorOut, "description": "the file is over the upload limit"},
        415: {"model": ErrorOut, "description": "the body is not multipart/form-data"},
        422: {
            "model": ValidationErrorOut,
            "description": "missing file, bad or missing kind, bad format",
        },
    },
)
async def create_upload(
    request: Request, response: Response, owner: Owner, settings: AppSettings, blobs: Blobs
) -> UploadOut:
    """Multipart form with `file` and `kind` (model or dataset), and for a dataset whose file
    name lacks its suffix, `format` (npz, pt, pth, csv). Returns an id to use in a spec as
    `upload:<id>` (the `ref` field).

    Deduplicated per owner and kind by sha256: uploading the same bytes again returns the
    existing upload with status 200 instead of 201. A dataset's format is its stored name's
    suffix: sending the same bytes again under a name with a suffix (or with `format`) gives
    a dataset stored without one that name, keeping its id; asking for another format than
    the stored one is a 409. Files over the service's limit get 413, whether the request says
    so up front (Content-Length) or not.
    """
    limit = settings.max_upload_bytes
    length = request.headers.get("content-length", "")
    if length.isdigit() and int(length) > limit + ENVELOPE_SLACK:
        raise _too_large(limit)
    sessions = request.app.state.sessions  # the project's storage quota: 429 when it is full
    await anyio.to_thread.run_sync(enforce_upload_quota, sessions, owner, settings, length)
    boundary = boundary_of(request.headers.get("content-type"))
    if boundary is None:
        raise ApiError(
            415,
            "send multipart/form-data with the fields file and kind "
            "(curl -F file=@model.onnx -F kind=model)",
            "unsupported_media_type",
        )
    body = request.stream()

    async def next_chunk() -> bytes | None:
        try:
            return await body.__anext__()
        except StopAsyncIteration:
            return None

    def pull() -> bytes | None:
        return anyio.from_thread.run(next_chunk)

    try:
        reader = FormReader(boundary, pull)
        upload, created = await anyio.to_thread.run_sync(
            _receive, reader, blobs, limit, request.app.state.sessions, upload_owner(owner)
        )
    except FormError as exc:
        raise FieldErrors([(exc.loc, exc.msg)]) from None
    except ClientDisconnect:
        raise ApiError(400, "the client went away before the upload finished", "aborted") from None
    if not created:
        response.status_code = 200
    return UploadOut.of(upload)


@router.get(
    "",
    response_model=UploadList,
    summary="Find uploads by content",
    responses={422: {"model": ValidationErrorOut, "description": "bad sha256 or kind"}},
)
def find_uploads(
    session: DbSession,
    owner: Owner,
    sha256: Annotated[
        str, Query(pattern="^[0-9a-f]{64}$", description="hex sha256 of the file's bytes")
    ],
    kind: Annotated[Literal["model", "dataset"] | None, Query(description="only this kind")] = None,
) -> UploadList:
    """The caller's uploads with these bytes: a client checks here before sending a file it
    may have sent before (`distill submit` does), and uses the returned `ref` instead."""
    q = select(Upload).where(Upload.owner == upload_owner(owner), Upload.sha256 == sha256)
    if kind is not None:
        q = q.where(Upload.kind == kind)
    uploads = session.scalars(q.order_by(Upload.created_at))
    return UploadList(items=[UploadOut.of(u) for u in uploads])


@router.get(
    "/{upload_id}",
    response_model=UploadOut,
    summary="Get an upload's metadata",
    responses={404: {"model": ErrorOut, "description": "no such upload"}},
)
def get_upload(upload_id: str, session: DbSession, owner: Owner) -> UploadOut:
    """Kind, original file name, sha256 and size of an upload."""
    upload = session.get(Upload, upload_id)
    if upload is None or upload.owner != upload_owner(owner):
        raise not_found("upload", upload_id)
    return UploadOut.of(upload)
