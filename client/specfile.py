"""A spec as the client holds it: read from YAML/JSON, with its local files found.

A spec sent to the service may name files only as `upload:<id>`; on a laptop or in CI it names
paths, relative to the spec's folder (as `distill run` reads them). This module finds those
paths so the SDK can upload them and put the ids in their place. It works on the plain dict:
the server validates the spec (one set of rules, one set of error messages).
"""

from __future__ import annotations

import copy
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import yaml

from client.errors import FieldError, InvalidSpec
from kdcore.spec import JOB_PREFIX, UPLOAD_PREFIX, set_path

BUILTIN_DATA = frozenset({"digits", "synthetic"})
MODEL_KEYS = ("checkpoint", "torchscript", "onnx")
Kind = Literal["model", "dataset"]  # of an upload


def file_fields(spec: dict[str, Any]) -> list[tuple[str, Any, Kind]]:
    """(field path, value, upload kind) of every file field of a plain spec dict: the fields
    kdcore.spec.file_references reports for a validated spec."""

    def section(value: Any) -> dict[str, Any]:
        return value if isinstance(value, dict) else {}

    fields: list[tuple[str, Any, Kind]] = [
        (f"teacher.{k}", section(spec.get("teacher")).get(k), "model") for k in MODEL_KEYS
    ]
    teachers = spec.get("teachers")
    for i, entry in enumerate(teachers if isinstance(teachers, list) else []):
        fields += [(f"teachers.{i}.{k}", section(entry).get(k), "model") for k in MODEL_KEYS]
    fields.append(("student.checkpoint", section(spec.get("student")).get("checkpoint"), "model"))
    fields.append(("data.source", section(spec.get("data")).get("source"), "dataset"))
    return fields


@dataclass(frozen=True)
class LocalFile:
    loc: str  # "teacher.onnx"
    kind: Kind
    path: Path


def read_spec(path: str | Path) -> dict[str, Any]:
    """The spec in a YAML or JSON file, as a dict (InvalidSpec if unreadable)."""
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as exc:
        raise InvalidSpec([FieldError("(file)", f"cannot read {path}: {exc.strerror}")]) from None
    try:
        data = json.loads(text) if path.suffix == ".json" else yaml.safe_load(text)
    except (yaml.YAMLError, json.JSONDecodeError) as exc:
        raise InvalidSpec([FieldError("(file)", f"{path} is not valid YAML/JSON: {exc}")]) from None
    if not isinstance(data, dict):
        raise InvalidSpec(
            [FieldError("(root)", "a spec is a mapping with name, teacher, student, data, ...")]
        )
    return data


def local_files(spec: dict[str, Any], base: Path) -> list[LocalFile]:
    """The files the spec names by path (not `upload:`, not `job:`, not a built-in data set),
    resolved against `base`; InvalidSpec naming every field whose file is missing. A `job:<id>`
    reference is the server's to check (and only some fields may use one), so it is sent as
    written."""
    found: list[LocalFile] = []
    missing: list[FieldError] = []
    for loc, value, kind in file_fields(spec):
        if not isinstance(value, str) or not value or value.startswith((UPLOAD_PREFIX, JOB_PREFIX)):
            continue
        if loc == "data.source" and value in BUILTIN_DATA:
            continue
        path = Path(value).expanduser()
        path = path if path.is_absolute() else base / path
        if not path.is_file():
            missing.append(
                FieldError(
                    loc,
                    f"{value!r}: no such file (relative paths are read from {base})",
                )
            )
            continue
        found.append(LocalFile(loc, kind, path))
    if missing:
        raise InvalidSpec(missing)
    return found


def with_uploads(spec: dict[str, Any], refs: dict[str, str]) -> dict[str, Any]:
    """A copy of the spec with file fields ("teacher.onnx") replaced by `upload:<id>` refs."""
    out = copy.deepcopy(spec)
    for loc, ref in refs.items():
        set_path(out, loc, ref)
    return out
