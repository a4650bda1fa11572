"""GPD in the API: a job's evaluation shows the dynamic teacher and the gaps (a job without a
static teacher has null teacher numbers), and `student.checkpoint: job:<id>` is accepted only for
a succeeded job of the caller's project that exported safetensors (otherwise a 422 naming the
field and the fix)."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from sqlalchemy.orm import Session

from api.main import create_app
from kdcore.report import Report
from kdcore.validation import parse_spec
from store.auth import create_key
from store.jobs import create_job
from store.models import Artifact, Evaluation, Job, JobStatus
from store.settings import Settings

from ._reports import make_report

NewSpec = Callable[..., dict[str, Any]]

DYNAMIC = {
    "ratio": 2,
    "scenario": "scratch",
    "cbr": False,
    "accuracy": 91.5,
    "params": 1442,
    "size_bytes": 7040,
    "latency_ms": 0.2,
}
STUDENT = {"accuracy": 90.0, "params": 438, "size_bytes": 3000, "latency_ms": 0.1}
TEACHER = {"accuracy": 97.0, "params": 85_000, "size_bytes": 340_000, "latency_ms": 0.5}


def report(teacher: dict[str, Any] | None) -> Report:
    """A report as kdcore writes it for a GPD job, with or without a static teacher."""
    t = teacher["accuracy"] if teacher else None
    gaps = {
        "teacher_student": round(t - 90.0, 4) if t else None,
        "teacher_dynamic": round(t - 91.5, 4) if t else None,
        "dynamic_student": 1.5,
    }
    gap = gaps["teacher_student"] if teacher else gaps["dynamic_student"]
    return make_report(
        teacher={"source": "checkpoint", "arch": "mlp", **teacher} if teacher else None,
        dynamic_teacher=DYNAMIC,
        student={"arch": "convnet", "best_accuracy": 90.0, **STUDENT},
        baseline=None,
        gap=gap,
        gap_reference="teacher" if teacher else "dynamic_teacher",
        gaps=gaps,
        compression=round(85_000 / 438, 3) if teacher else None,
        gates={"passed": True, "checks": []},
    )


def gpd_spec(**sections: Any) -> dict[str, Any]:
    spec: dict[str, Any] = {
        "name": f"gpd-{uuid.uuid4().hex[:8]}",
        "student": {"arch": "convnet", "kwargs": {"channels": [4, 8]}},
        "data": {"source": "digits"},
        "method": {"name": "gpd", "scenario": "scratch", "ratio": 2},
        "train": {"epochs": 1},
        "export": ["safetensors"],
    }
    spec.update(sections)
    return spec


def finetune_from(ref: str) -> dict[str, Any]:
    return gpd_spec(
        student={"arch": "convnet", "kwargs": {"channels": [4, 8]}, "checkpoint": ref},
        method={"name": "gpd", "scenario": "finetune", "ratio": 2},
    )


def finished_job(
    app: FastAPI,
    db: Session,
    *,
    teacher: dict[str, Any] | None = None,
    owner: str | None = None,
    status: JobStatus = JobStatus.succeeded,
    formats: tuple[str, ...] = ("safetensors", "config"),
) -> str:
    """A GPD job written straight to the store, with its artifacts and evaluation."""
    job = create_job(db, parse_spec(gpd_spec()), owner=owner)
    for fmt in formats:
        sha, size = app.state.blobs.put_stream(iter([f"{fmt} of {job.id}".encode()]))
        db.add(
            Artifact(
                job_id=job.id,
                format=fmt,
                filename=f"student.{fmt}",
                storage_key=sha,
                sha256=sha,
                size_bytes=size,
                max_abs_diff=0.0,
            )
        )
    if status == JobStatus.succeeded:
        db.add(Evaluation.of(job.id, report(teacher)))
    job.status = status
    db.commit()
    return job.id


def test_a_teacherless_gpd_job_shows_its_dynamic_teacher(
    app: FastAPI, db: Session, client: TestClient
) -> None:
    job_id = finished_job(app, db)
    ev = client.get(f"/v1/jobs/{job_id}").json()["evaluation"]
    assert (ev["teacher_accuracy"], ev["teacher_params"], ev["teacher_latency_ms"]) == (
        None,
        None,
        None,
    )
    assert ev["compression_ratio"] is None
    assert (ev["dynamic_teacher_accuracy"], ev["dynamic_teacher_params"]) == (91.5, 1442)
    assert ev["dynamic_teacher_ratio"] == 2
    assert ev["gap_reference"] == "dynamic_teacher"
    assert ev["gap"] == ev["gap_dynamic_student"] == 1.5
    assert ev["gap_teacher_dynamic"] is None


def test_a_gpd_job_with_a_teacher_shows_all_three_gaps(
    app: FastAPI, db: Session, client: TestClient
) -> None:
    job_id = finished_job(app, db, teacher=TEACHER)
    ev = client.get(f"/v1/jobs/{job_id}").json()["evaluation"]
    assert ev["gap_reference"] == "teacher" and ev["teacher_accuracy"] == 97.0
    assert (ev["gap"], ev["gap_teacher_dynamic"], ev["gap_dynamic_student"]) == (7.0, 5.5, 1.5)
    assert ev["compression_ratio"] == pytest.approx(85_000 / 438, abs=1e-3)


def test_the_openapi_document_describes_the_new_fields(client: TestClient) -> None:
    props = client.get("/openapi.json").json()["components"]["schemas"]["EvaluationOut"][
        "properties"
    ]
    assert "dynamic teacher minus student" in props["gap"]["description"]
    for name in ("dynamic_teacher_accuracy", "gap_reference", "gap_dynamic_student"):
        assert props[name]["description"], name


def test_a_finished_jobs_weights_can_start_a_new_job(
    app: FastAPI, db: Session, client: TestClient, queued: Any
) -> None:
    earlier = finished_job(app, db)
    r = client.post("/v1/jobs", json=finetune_from(f"job:{earlier}"))
    assert r.status_code == 201, r.text
    assert r.json()["spec"]["student"]["checkpoint"] == f"job:{earlier}"
    assert [m["args"] for m in queued()] == [[r.json()["id"]]]


def _refusal(client: TestClient, ref: str) -> str:
    r = client.post("/v1/jobs", json=finetune_from(ref))
    assert r.status_code == 422, r.text
    (error,) = r.json()["detail"]
    assert error["loc"] == "student.checkpoint"
    return error["msg"]


def test_a_missing_job_is_refused(client: TestClient) -> None:
    msg = _refusal(client, "job:" + "0" * 32)
    assert "does not exist" in msg and "job:<id>" in msg
    assert "names no job" in _refusal(client, "job:")


@pytest.mark.parametrize("status", [JobStatus.queued, JobStatus.running, JobStatus.failed])
def test_an_unfinished_or_failed_job_is_refused(
    app: FastAPI, db: Session, client: TestClient, status: JobStatus
) -> None:
    job_id = finished_job(app, db, status=status)
    msg = _refusal(client, f"job:{job_id}")
    assert f"is {status.value}, not succeeded" in msg and "wait for it" in msg


def test_a_job_without_safetensors_is_refused(
    app: FastAPI, db: Session, client: TestClient
) -> None:
    job_id = finished_job(app, db, formats=("onnx",))
    msg = _refusal(client, f"job:{job_id}")
    assert "no safetensors artifact" in msg and "export" in msg


def test_a_job_reference_elsewhere_than_student_checkpoint_is_refused(
    app: FastAPI, db: Session, client: TestClient
) -> None:
    earlier = finished_job(app, db)
    spec = gpd_spec(
        teacher={"arch": "convnet", "kwargs": {"channels": [4, 8]}, "checkpoint": f"job:{earlier}"},
        method={"name": "gpd", "ratio": 2},
    )
    r = client.post("/v1/jobs", json=spec)
    assert r.status_code == 422, r.text
    (error,) = r.json()["detail"]
    assert error["loc"] == "teacher.checkpoint" and "upload:<id>" in error["msg"]


@pytest.fixture
def keyed(settings: Settings) -> Iterator[tuple[FastAPI, TestClient, dict[str, str]]]:
    """An app with keys and a key for each of two fresh projects."""
    app = create_app(settings.model_copy(update={"auth": "keys"}))
    keys = {}
    with app.state.sessions() as s:
        for label in ("a", "b"):
            name = f"project-{label}-{uuid.uuid4().hex[:8]}"
            _, keys[label] = create_key(s, name)
            keys[f"{label}-name"] = name
        s.commit()
    with TestClient(app) as c:
        yield app, c, keys


def test_another_projects_job_is_refused_like_a_missing_one(
    keyed: tuple[FastAPI, TestClient, dict[str, str]],
) -> None:
    app, http, keys = keyed
    with app.state.sessions() as s:
        theirs = finished_job(app, s, owner=keys["b-name"])
        assert s.get(Job, theirs) is not None
    as_a = {"Authorization": f"Bearer {keys['a']}"}
    as_b = {"Authorization": f"Bearer {keys['b']}"}
    r = http.post("/v1/jobs", json=finetune_from(f"job:{theirs}"), headers=as_a)
    assert r.status_code == 422, r.text
    (error,) = r.json()["detail"]
    assert error["loc"] == "student.checkpoint" and "does not exist" in error["msg"]
    r = http.post("/v1/jobs", json=finetune_from(f"job:{theirs}"), headers=as_b)
    assert r.status_code == 201, r.text
