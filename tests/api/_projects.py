"""Projects with keys, jobs in a chosen state and artifacts, written straight to the store, for
the tests of quotas, keys and deletion (a worker would have written the same rows)."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from fastapi import FastAPI

from store.auth import create_key, get_or_create_project
from store.models import Artifact, Job, JobEvent, KeyScope, utcnow
from store.quotas import set_quotas


@dataclass(frozen=True)
class Project:
    name: str
    key: str
    key_id: str

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.key}"}


def new_project(
    app: FastAPI,
    *,
    quotas: dict[str, Any] | None = None,
    scope: KeyScope = KeyScope.write,
    expires_at: datetime | None = None,
) -> Project:
    """A fresh project (unique name) with one key, and these quota overrides."""
    name = f"project-{uuid.uuid4().hex[:8]}"
    with app.state.sessions() as s:
        project, _ = get_or_create_project(s, name)
        if quotas:
            set_quotas(s, project, quotas)
        row, key = create_key(s, name, scope=scope, expires_at=expires_at)
        s.commit()
        return Project(name, key, row.id)


def another_key(app: FastAPI, project: Project, **options: Any) -> Project:
    with app.state.sessions() as s:
        row, key = create_key(s, project.name, **options)
        s.commit()
        return Project(project.name, key, row.id)


def set_job(app: FastAPI, job_id: str, **values: Any) -> None:
    with app.state.sessions() as s:
        job = s.get(Job, job_id)
        assert job is not None
        for name, value in values.items():
            setattr(job, name, value)
        s.commit()


def status_event(app: FastAPI, job_id: str, status: str, at: datetime) -> None:
    with app.state.sessions() as s:
        s.add(JobEvent(job_id=job_id, kind="status", status=status, message=status, at=at))
        s.commit()


def add_artifact(app: FastAPI, job_id: str, content: bytes, format: str = "onnx") -> str:
    """Store `content` as the job's artifact in `format`; its sha256."""
    sha, size = app.state.blobs.put_stream(iter([content]))
    with app.state.sessions() as s:
        s.add(
            Artifact(
                job_id=job_id,
                format=format,
                filename=f"student.{format}",
                storage_key=sha,
                sha256=sha,
                size_bytes=size,
                max_abs_diff=0.0,
                created_at=utcnow(),
            )
        )
        s.commit()
    return str(sha)
