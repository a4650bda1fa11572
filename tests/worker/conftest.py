"""Fixtures for the worker tests: real PostgreSQL (`pg_url`) and Redis (`redis_url`, a queue of
each test's own), a blob store in a temporary folder, and small helpers to make jobs."""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from celery import Celery
from sqlalchemy import Engine, select, update

from kdcore.validation import parse_spec
from store.blobs import BlobStore
from store.db import make_engine, session_scope
from store.jobs import create_job
from store.models import Job, Upload, utcnow
from store.settings import Settings
from worker.app import make_celery
from worker.runner import Outcome, execute_job

TINY: dict[str, Any] = {
    "name": "tiny",
    "teacher": {"arch": "mlp", "kwargs": {"hidden": [16]}, "train": {"epochs": 2}},
    "student": {"arch": "mlp", "kwargs": {"hidden": [4]}},
    "data": {
        "source": "synthetic",
        "synthetic": {"input_shape": [8], "num_classes": 3, "n_train": 64, "n_val": 32},
    },
    "train": {"epochs": 2, "batch_size": 16},
    "evaluate": {"latency_runs": 1, "latency_batch_size": 4},
    "export": ["onnx", "safetensors"],
}


def tiny_spec(**sections: Any) -> dict[str, Any]:
    """TINY with whole top-level sections replaced or added."""
    spec = copy.deepcopy(TINY)
    spec.update(copy.deepcopy(sections))
    return spec


@pytest.fixture(scope="session")
def engine(pg_url: str) -> Iterator[Engine]:
    eng = make_engine(pg_url)
    yield eng
    eng.dispose()


@pytest.fixture
def blobs(tmp_path: Path) -> BlobStore:
    return BlobStore(tmp_path / "blobs")


@pytest.fixture
def settings(pg_url: str, redis_url: str, queue_name: str, tmp_path: Path) -> Settings:
    return Settings(
        data_dir=tmp_path / "data",
        database_url=pg_url,
        broker_url=redis_url,
        blob_dir=tmp_path / "blobs",
        queue=queue_name,
        lease_seconds=30,
        heartbeat_seconds=0.2,
        requeue_after_seconds=60,
        max_attempts=3,
    )


@pytest.fixture
def app(settings: Settings) -> Iterator[Celery]:
    celery = make_celery(settings)
    yield celery
    celery.close()


class Jobs:
    """Test-side access to the jobs table: make jobs, poke columns, read rows back."""

    def __init__(self, engine: Engine, blobs: BlobStore):
        self.engine = engine
        self.blobs = blobs

    def make(self, spec: dict[str, Any] | None = None, **values: Any) -> str:
        """A queued job (validated like the API does); `values` set columns afterwards."""
        with session_scope(self.engine) as s:
            job_id = create_job(s, parse_spec(spec or TINY)).id
        if values:
            self.set(job_id, **values)
        return job_id

    def set(self, job_id: str, **values: Any) -> None:
        with session_scope(self.engine) as s:
            s.execute(update(Job).where(Job.id == job_id).values(**values))

    def expire_lease(self, job_id: str) -> None:
        self.set(job_id, lease_expires_at=utcnow() - timedelta(seconds=1))

    def get(self, job_id: str) -> Job:
        with session_scope(self.engine) as s:
            job = s.get(Job, job_id)
            assert job is not None
            return job

    def rows(self, model: type, job_id: str) -> list[Any]:
        with session_scope(self.engine) as s:
            q = select(model).where(model.job_id == job_id)
            if hasattr(model, "id"):
                q = q.order_by(model.id)
            return list(s.scalars(q))

    def upload(self, data: bytes, filename: str, kind: str = "dataset") -> str:
        sha, size = self.blobs.put_stream([data])
        with session_scope(self.engine) as s:
            upload = Upload(owner="", kind=kind, filename=filename, sha256=sha, size_bytes=size)
            s.add(upload)
            s.flush()
            return upload.id


@pytest.fixture
def tiny() -> Callable[..., dict[str, Any]]:
    """`tiny(**sections)`: the tiny spec with top-level sections replaced."""
    return tiny_spec


@pytest.fixture
def jobs(engine: Engine, blobs: BlobStore) -> Jobs:
    return Jobs(engine, blobs)


@pytest.fixture
def run_job(settings: Settings, engine: Engine, blobs: BlobStore) -> Callable[..., Outcome]:
    def run(job_id: str, worker: str = "test-worker", **kwargs: Any) -> Outcome:
        return execute_job(job_id, settings, engine, blobs, worker, **kwargs)

    return run
