"""Turn a service spec's `upload:<id>` file fields (and `job:<id>` starting weights, an earlier
job's safetensors artifact: store/refs.py) into local files kdcore can open.

kdcore picks a loader by file suffix (.onnx, .npz, .csv, ...), and blobs are stored under their
sha256 with no suffix, so each upload is linked into the job's working folder under its
original (sanitised) filename. A spec run by the service may name files only by upload id: a
plain path would let a user read files on the worker machine.
"""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path

from sqlalchemy.orm import Session

from kdcore.errors import InputError
from kdcore.spec import UPLOAD_PREFIX, JobSpec, file_references, with_files
from store.blobs import BlobStore
from store.models import Upload
from store.refs import JOB_REF_FIELDS, is_job_ref, job_weights, misplaced_job_ref


def safe_filename(name: str) -> str:
    """The last path component with only [A-Za-z0-9._-]; the suffix (the loader key) is kept."""
    base = re.sub(r"[^A-Za-z0-9._-]", "_", Path(name.replace("\\", "/")).name).lstrip(".")
    return base[-200:] or "file"


def _link(src: Path, dest: Path) -> None:
    dest.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.symlink(src, dest)
    except OSError:  # no symlinks (some filesystems): a copy does as well
        shutil.copyfile(src, dest)


def localize_files(
    s: Session, spec: JobSpec, blobs: BlobStore, workdir: Path, owner: str | None = None
) -> tuple[JobSpec, dict[str, str]]:
    """Return the spec with every file field pointing at a local file, and a map from each local
    path to how the user named it (so error messages show `upload:<id> (name)`, not a temp
    path). `owner` is the running job's project: a `job:<id>` reference must be one of its jobs
    (None: every owner, as the API allows on a service without keys)."""
    replace: dict[str, str] = {}
    names: dict[str, str] = {}
    for field, value, _kind in file_references(spec):
        if is_job_ref(value):
            if field not in JOB_REF_FIELDS:
                raise InputError(field, misplaced_job_ref(field))
            artifact, problem = job_weights(s, value, owner)
            if artifact is None:
                raise InputError(field, problem)
            blob = blobs.path(artifact.storage_key)
            if not blob.is_file():
                raise RuntimeError(f"{field}: the blob of {value}'s {artifact.format} is missing")
            dest = workdir / "inputs" / field / safe_filename(artifact.filename)
            _link(blob, dest)
            replace[field] = str(dest)
            names[str(dest)] = f"{value} ({artifact.filename})"
            continue
        if not value.startswith(UPLOAD_PREFIX):
            raise InputError(
                field,
                f"{value!r} is not an upload; the service reads files only as "
                f"{UPLOAD_PREFIX}<id> (upload the file first and use the id it returns)",
            )
        upload_id = value.removeprefix(UPLOAD_PREFIX)
        upload = s.get(Upload, upload_id)
        if upload is None:
            raise InputError(
                field, f"upload {upload_id!r} does not exist; upload the file and use its id"
            )
        blob = blobs.path(upload.sha256)
        if not blob.is_file():
            raise RuntimeError(f"{field}: the blob of upload {upload_id} is missing ({blob})")
        dest = workdir / "inputs" / field / safe_filename(upload.filename)
        _link(blob, dest)
        replace[field] = str(dest)
        names[str(dest)] = f"{value} ({upload.filename})"
    return (with_files(spec, replace) if replace else spec), names


def public_message(message: str, names: dict[str, str]) -> str:
    """An error message with local working paths replaced by the user's own names."""
    for local, shown in sorted(names.items(), key=lambda kv: -len(kv[0])):
        message = message.replace(local, shown)
    return message
