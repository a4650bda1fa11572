"""The name an upload is stored under is its format: the worker links the blob into the job's
folder under that name, and the data loader picks its reader by the suffix.

Uploads are deduplicated by (owner, kind, sha256), so the same bytes cannot be stored twice
under two names. Instead, the name is honoured or refused, never silently ignored:

- an explicit `format` form field puts its suffix on the name (`data` + npz → `data.npz`);
- the same bytes sent again under a usable name fix an upload whose name had no usable suffix
  (it keeps its id, so a spec naming `upload:<id>` now works; no job can have used it, since
  the submission check refuses a dataset without a known suffix);
- the same bytes sent again in another format than the one stored are a 409 naming the upload.

Models are recognised by their content and by the spec field that names them (checkpoint,
torchscript, onnx), so their names are shown only and never changed.
"""

from __future__ import annotations

from pathlib import PurePosixPath

from api.errors import ApiError, FieldErrors

#: kdcore.data.sources.FILE_TYPES, which imports torch (a test keeps the two equal).
DATASET_SUFFIXES = (".npz", ".pt", ".pth", ".csv")
DATASET_FORMATS = tuple(s.removeprefix(".") for s in DATASET_SUFFIXES)
MAX_NAME = 255  # the column's width (api.multipart.clean_filename keeps names within it)
# suffixes one reader reads alike
_SAME_READER = {".pth": ".pt"}


def check_format(kind: str | None, fmt: str | None) -> str | None:
    """The `format` field as a suffix (".npz"), or None when absent; a 422 when unusable."""
    if fmt is None or not fmt.strip():
        return None
    suffix = "." + fmt.strip().lower().removeprefix(".")
    if kind == "model":
        raise FieldErrors(
            [
                (
                    "format",
                    "is for datasets only; a model is recognised by its content and by the "
                    "spec field that names it (checkpoint, torchscript or onnx)",
                )
            ]
        )
    if suffix not in DATASET_SUFFIXES:
        known = ", ".join(DATASET_FORMATS)
        raise FieldErrors([("format", f"{fmt!r} is not a dataset format; use one of {known}")])
    return suffix


def stored_name(filename: str, suffix: str | None) -> str:
    """The client's file name with the explicit format's suffix, unless it has it already."""
    if suffix is None or PurePosixPath(filename).suffix.lower() == suffix:
        return filename
    return f"{filename[-(MAX_NAME - len(suffix)) :]}{suffix}"


def dataset_format(filename: str) -> str | None:
    """The reader a dataset named `filename` gets (".npz", ".pt", ".csv"), None without one."""
    suffix = PurePosixPath(filename).suffix.lower()
    if suffix not in DATASET_SUFFIXES:
        return None
    return _SAME_READER.get(suffix, suffix)


def renamed(kind: str, upload_id: str, stored: str, offered: str) -> str | None:
    """The name an existing upload (`stored`) takes when its bytes are sent again as `offered`:
    None to keep it; a 409 when both name a dataset format and they differ."""
    if kind != "dataset":
        return None
    have, want = dataset_format(stored), dataset_format(offered)
    if want is None or have == want:
        return None
    if have is None:
        return offered
    raise ApiError(
        409,
        f"these bytes are already upload {upload_id!r}, named {stored!r} and read as "
        f"{have.removeprefix('.')}; the same file cannot also be {want.removeprefix('.')}. Use "
        f"upload:{upload_id} as it is, or upload a file that really is {want.removeprefix('.')}",
        "format_conflict",
        upload_id=upload_id,
        filename=stored,
    )
