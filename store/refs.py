"""A spec field naming an earlier job's output: `student.checkpoint: job:<id>` starts the student
from that job's exported safetensors weights (fine-tuning a student trained before, e.g. GPD's
`finetune` scenario) without downloading and uploading them again.

The API checks the reference when the job is submitted and the worker resolves it to the
artifact's blob before running; both go through `job_weights`, so they apply the same rules:
the job is visible to the caller (another project's job does not exist for it), has succeeded,
and has a safetensors artifact.
"""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.orm import Session

from kdcore.spec import JOB_PREFIX
from store.jobs import get_job
from store.models import Artifact, JobStatus

WEIGHTS_FORMAT = "safetensors"
# the spec fields that may name an earlier job (state-dict weights of the same architecture)
JOB_REF_FIELDS = frozenset({"student.checkpoint"})


def is_job_ref(value: str | None) -> bool:
    return isinstance(value, str) and value.startswith(JOB_PREFIX)


def job_weights(s: Session, value: str, owner: str | None) -> tuple[Artifact | None, str]:
    """The safetensors Artifact of the job `value` (`job:<id>`) names, as `owner` sees it (None:
    every owner, a service without keys); or (None, what is wrong and how to fix it)."""
    job_id = value.removeprefix(JOB_PREFIX).strip()
    if not job_id:
        return None, f"{value!r} names no job; write job:<id> with the id of a succeeded job"
    job = get_job(s, job_id, owner)
    if job is None:
        return None, (
            f"job {job_id!r} does not exist; name a succeeded job of this project as job:<id> "
            "(GET /v1/jobs lists them)"
        )
    if job.status != JobStatus.succeeded:
        return None, (
            f"job {job_id!r} is {job.status}, not succeeded; only a succeeded job's student can be "
            "the starting point: wait for it to succeed (or retry it), then submit again"
        )
    artifact = s.scalars(
        select(Artifact).where(Artifact.job_id == job_id, Artifact.format == WEIGHTS_FORMAT)
    ).first()
    if artifact is None:
        return None, (
            f"job {job_id!r} has no {WEIGHTS_FORMAT} artifact (its spec's export left it out); "
            f"run it again with export including {WEIGHTS_FORMAT}, or upload the weights "
            "(POST /v1/uploads, kind=model) and use upload:<id>"
        )
    return artifact, ""


def misplaced_job_ref(loc: str) -> str:
    """The message for `job:<id>` in a field that cannot take one."""
    return (
        f"{loc} cannot name an earlier job (only {', '.join(sorted(JOB_REF_FIELDS))} can); "
        f"download its weights (GET /v1/jobs/<id>/artifacts/{WEIGHTS_FORMAT}), upload them "
        "(POST /v1/uploads, kind=model) and use upload:<id>"
    )
