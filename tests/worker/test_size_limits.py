"""The worker holds a job to its project's budget once the data's shape is known (an uploaded
file), before any training: an input error naming the field, not an allocation crash."""

from __future__ import annotations

import io
import uuid
from typing import Any

import numpy as np
from sqlalchemy import Engine

from store.blobs import BlobStore
from store.models import JobEvent, JobStatus
from store.settings import Settings
from worker.runner import execute_job


def npz_bytes(x_train: np.ndarray, y_train: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.savez(buf, x_train=x_train, y_train=y_train)
    return buf.getvalue()


def wide_upload(jobs: Any) -> str:
    """3072 inputs per row: the tiny spec's teacher (hidden 16) has 49k parameters on it. New
    bytes each time (an upload's bytes are unique per project)."""
    rng = np.random.default_rng(uuid.uuid4().int)
    x = rng.normal(size=(48, 3, 32, 32)).astype(np.float32)
    return jobs.upload(npz_bytes(x_train=x, y_train=np.arange(48) % 3), "wide.npz")


def test_a_model_too_big_for_the_uploaded_data_fails_as_invalid_input(
    jobs: Any, tiny: Any, settings: Settings, engine: Engine, blobs: BlobStore
) -> None:
    small = settings.model_copy(update={"max_model_params": 20_000})
    job_id = jobs.make(tiny(data={"source": f"upload:{wide_upload(jobs)}"}))
    outcome = execute_job(job_id, small, engine, blobs, "w1")
    assert (outcome.status, outcome.error_code) == (JobStatus.failed, "invalid_input"), outcome
    job = jobs.get(job_id)
    assert job.error_message.startswith("teacher.kwargs: ")
    assert "20,000" in job.error_message
    assert not [e for e in jobs.rows(JobEvent, job_id) if e.kind == "stage"]  # nothing trained


def test_the_jobs_project_budget_applies_in_the_worker(
    jobs: Any, tiny: Any, settings: Settings, engine: Engine, blobs: BlobStore
) -> None:
    project = f"roomy-{uuid.uuid4().hex[:8]}"
    roomy = settings.model_copy(
        update={
            "max_model_params": 20_000,
            "project_limits": {project: {"max_model_params": 10**6}},
        }
    )
    job_id = jobs.make(tiny(data={"source": f"upload:{wide_upload(jobs)}"}), owner=project)
    outcome = execute_job(job_id, roomy, engine, blobs, "w1")
    assert outcome.status == JobStatus.succeeded, outcome
