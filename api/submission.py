"""Checks a spec must pass before it becomes a job, beyond what `parse_spec` checks.

A spec sent over HTTP runs on a server that must not read its own files on a client's say-so,
so every file field must name an upload (`upload:<id>`) that exists, belongs to the caller and
has the right kind; `student.checkpoint` may instead name an earlier job (`job:<id>`, see
store/refs.py) that the caller can see, that has succeeded and has safetensors weights. The
runtime a spec asks for is capped by the service's settings (it sets the broker's visibility
timeout, so a longer job would be delivered twice).
"""

from __future__ import annotations

from pathlib import PurePosixPath
from typing import Any

from sqlalchemy.orm import Session

from api.errors import FieldErrors
from kdcore.spec import UPLOAD_PREFIX, JobSpec, file_references
from kdcore.validation import parse_spec
from store.models import Upload
from store.refs import JOB_REF_FIELDS, is_job_ref, job_weights, misplaced_job_ref
from store.settings import Settings
from store.webhooks import webhook_url_errors


def check_spec(data: Any, session: Session, owner: str | None, settings: Settings) -> JobSpec:
    """Parse and check a submitted spec; raise `SpecError`/`FieldErrors` naming each field.
    `owner` is the caller's project (None: a service without keys, which sees every job)."""
    if not isinstance(data, dict):
        raise FieldErrors(
            [("(root)", "a job spec is a JSON object with name, teacher, student, data, ...")],
            code="invalid_spec",
        )
    spec = parse_spec(data, settings.limits_for(owner))
    errors = upload_errors(spec, session, owner) + webhook_url_errors(
        spec, settings.webhook_allow_rules
    )
    if spec.train.max_runtime_s > settings.max_job_runtime_s:
        errors.append(
            (
                "train.max_runtime_s",
                f"{spec.train.max_runtime_s} s is above this service's limit of "
                f"{settings.max_job_runtime_s} s; ask for at most that",
            )
        )
    if errors:
        raise FieldErrors(errors, code="invalid_spec")
    return spec


def upload_errors(spec: JobSpec, session: Session, owner: str | None) -> list[tuple[str, str]]:
    errors = []
    for loc, value, kind in file_references(spec):
        if is_job_ref(value):
            if loc not in JOB_REF_FIELDS:
                errors.append((loc, misplaced_job_ref(loc)))
                continue
            _, problem = job_weights(session, value, owner)
            if problem:
                errors.append((loc, problem))
            continue
        if not value.startswith(UPLOAD_PREFIX):
            errors.append(
                (
                    loc,
                    f"{value!r} is a local path; a spec sent to the service must name an "
                    f"uploaded file: POST /v1/uploads (kind={kind}), then use upload:<id>"
                    + (" (or job:<id>, an earlier job's student)" if loc in JOB_REF_FIELDS else ""),
                )
            )
            continue
        upload_id = value[len(UPLOAD_PREFIX) :]
        upload = session.get(Upload, upload_id) if upload_id else None
        if upload is None or upload.owner != (owner or ""):
            errors.append(
                (loc, f"upload {upload_id!r} does not exist; POST /v1/uploads (kind={kind}) first")
            )
        elif upload.kind != kind:
            errors.append(
                (
                    loc,
                    f"upload {upload_id!r} ({upload.filename}) is a {upload.kind}, but this field "
                    f"needs a {kind}; upload the file with kind={kind}",
                )
            )
        elif kind == "dataset" and (type_problem := _dataset_type_problem(upload)):
            errors.append((loc, type_problem))
    return errors


def _dataset_type_problem(upload: Upload) -> str | None:
    """The data loader picks its reader by file suffix; catch a wrong one now, not in the
    worker an hour later."""
    from kdcore.data.sources import FILE_TYPES

    suffix = PurePosixPath(upload.filename).suffix.lower()
    if suffix in FILE_TYPES:
        return None
    return (
        f"upload {upload.id!r} is named {upload.filename!r}, which says no dataset format "
        f"({', '.join(FILE_TYPES)}); upload the same file again named with one (train.npz), "
        "or with the form field format=npz (pt, pth, csv): the upload keeps its id"
    )
