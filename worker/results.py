"""From kdcore's report to the files a finished job keeps: Artifact rows for the exported files,
stored content-addressed in the blob store (so writing them again changes nothing). The rest of
the result is `store.models.Evaluation.of(job_id, report.stored(spec))`."""

from __future__ import annotations

from pathlib import Path

from kdcore.report import Report
from store.blobs import BlobStore
from store.models import Artifact

# The safetensors weights are useless without the architecture sidecar kdcore writes next to
# them; it is kept as an artifact of its own format.
CONFIG_FORMAT = "config"
CONFIG_FILENAME = "student.json"


def store_artifacts(blobs: BlobStore, job_id: str, report: Report) -> list[Artifact]:
    """Put every exported file in the blob store; return (unsaved) Artifact rows."""
    rows: list[Artifact] = []
    for item in report.artifacts:
        assert item.path is not None, "the engine's report names where it wrote each file"
        path = Path(item.path)
        sha, size = blobs.put_file(path)
        if sha != item.sha256:
            raise RuntimeError(f"{path.name} changed after export ({item.sha256} != {sha})")
        rows.append(
            Artifact(
                job_id=job_id,
                format=item.format,
                filename=path.name,
                storage_key=sha,
                sha256=sha,
                size_bytes=size,
                max_abs_diff=float(item.max_abs_diff),
            )
        )
        sidecar = path.with_name(CONFIG_FILENAME)
        if item.format == "safetensors" and sidecar.is_file():
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
