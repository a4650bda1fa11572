"""From kdcore's report to the rows a finished job keeps: Artifact rows for the exported files
(stored content-addressed in the blob store, so writing them again changes nothing) and the
Evaluation row. The stored report names files, never the worker's temporary paths."""

from __future__ import annotations

import copy
import math
from pathlib import Path
from typing import Any

from store.blobs import BlobStore
from store.models import Artifact, Evaluation

# The safetensors weights are useless without the architecture sidecar kdcore writes next to
# them; it is kept as an artifact of its own format.
CONFIG_FORMAT = "config"
CONFIG_FILENAME = "student.json"


def store_artifacts(blobs: BlobStore, job_id: str, report: dict[str, Any]) -> list[Artifact]:
    """Put every exported file in the blob store; return (unsaved) Artifact rows."""
    rows: list[Artifact] = []
    for item in report["artifacts"]:
        path = Path(item["path"])
        sha, size = blobs.put_file(path)
        if sha != item["sha256"]:
            raise RuntimeError(f"{path.name} changed after export ({item['sha256']} != {sha})")
        rows.append(
            Artifact(
                job_id=job_id,
                format=item["format"],
                filename=path.name,
                storage_key=sha,
                sha256=sha,
                size_bytes=size,
                max_abs_diff=float(item["max_abs_diff"]),
            )
        )
        sidecar = path.with_name(CONFIG_FILENAME)
        if item["format"] == "safetensors" and sidecar.is_file():
            sha, size = blobs.put_file(sidecar)
            rows.append(
                Artifact(
                    job_id=job_id,
                    format=CONFIG_FORMAT,
                    filename=CONFIG_FILENAME,
                    storage_key=sha,
                    sha256=sha,
                    size_bytes=size,
                    max_abs_diff=0.0,
                )
            )
    return rows


def public_report(report: dict[str, Any], spec: dict[str, Any]) -> dict[str, Any]:
    """The report as stored: the spec as the user submitted it (upload ids, not temp paths),
    artifact file names instead of paths, and no NaN/inf (PostgreSQL's JSON refuses them)."""
    out = copy.deepcopy(report)
    out["spec"] = spec
    for item in out.get("artifacts", []):
        item["filename"] = Path(item.pop("path")).name
    return _finite(out)


def _finite(obj: Any) -> Any:
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_finite(v) for v in obj]
    return obj


def evaluation_row(job_id: str, report: dict[str, Any]) -> Evaluation:
    """The Evaluation row of a stored report. `teacher` is null for a GPD job without a static
    teacher (then so are the teacher columns and the compression ratio); `dynamic_teacher` is set
    for GPD jobs only."""
    teacher, student, baseline = report.get("teacher"), report["student"], report.get("baseline")
    dynamic = report.get("dynamic_teacher")
    gaps = report.get("gaps") or {}
    return Evaluation(
        job_id=job_id,
        teacher_accuracy=teacher["accuracy"] if teacher else None,
        student_accuracy=student["accuracy"],
        baseline_accuracy=baseline["accuracy"] if baseline else None,
        gap=report["gap"],
        teacher_params=teacher["params"] if teacher else None,
        student_params=student["params"],
        compression_ratio=report.get("compression"),
        teacher_latency_ms=teacher["latency_ms"] if teacher else None,
        student_latency_ms=student["latency_ms"],
        student_size_bytes=student["size_bytes"],
        dynamic_teacher_accuracy=dynamic["accuracy"] if dynamic else None,
        dynamic_teacher_params=dynamic["params"] if dynamic else None,
        dynamic_teacher_ratio=dynamic["ratio"] if dynamic else None,
        gap_reference=report.get("gap_reference") or "teacher",
        gap_teacher_dynamic=gaps.get("teacher_dynamic"),
        gap_dynamic_student=gaps.get("dynamic_student"),
        gate_passed=bool(report["gates"]["passed"]),
        gates=report["gates"],
        report=report,
    )


def summary(report: dict[str, Any]) -> str:
    """One line for the job's final event."""
    teacher, dynamic = report.get("teacher"), report.get("dynamic_teacher")
    parts = [f"student {report['student']['accuracy']:.2f}%"]
    if teacher:
        parts.append(f"vs teacher {teacher['accuracy']:.2f}%")
    if dynamic:
        word = "and" if teacher else "vs"
        parts.append(
            f"{word} dynamic teacher {dynamic['accuracy']:.2f}% (GPD, ratio {dynamic['ratio']})"
        )
    against = " to the dynamic teacher" if report.get("gap_reference") == "dynamic_teacher" else ""
    details = [f"gap {report['gap']:.2f} points{against}"]
    if report.get("compression") is not None:
        details.append(f"{report['compression']:.1f}x fewer parameters")
    line = " ".join(parts) + f" ({', '.join(details)})"
    failed = [c for c in report["gates"]["checks"] if not c["passed"]]
    if failed:
        line += "; quality gate failed: " + ", ".join(
            f"{c['name']} {c['value']} vs {c['threshold']}" for c in failed
        )
    return line
