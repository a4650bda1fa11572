"""Artifact downloads: whole file, ETag/304, byte ranges, unknown formats; evaluation report."""

from __future__ import annotations

import hashlib
import os
from typing import Any

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from sqlalchemy.orm import Session

from kdcore.validation import parse_spec
from store.jobs import create_job
from store.models import Artifact, Evaluation, JobStatus

from ._reports import STUDENT, make_report

CONTENT = os.urandom(10_000)
SHA = hashlib.sha256(CONTENT).hexdigest()


@pytest.fixture
def job_id(app: FastAPI, db: Session, new_spec: Any) -> str:
    """A succeeded job with an ONNX artifact and an evaluation, written straight to the store."""
    job = create_job(db, parse_spec(new_spec("my digits/kd")))
    sha, size = app.state.blobs.put_stream(iter([CONTENT[:4000], CONTENT[4000:]]))
    assert sha == SHA
    db.add(
        Artifact(
            job_id=job.id,
            format="onnx",
            filename="student.onnx",
            storage_key=sha,
            sha256=sha,
            size_bytes=size,
            max_abs_diff=1e-6,
        )
    )
    db.add(
        Evaluation.of(
            job.id,
            make_report(
                teacher={
                    "source": "train",
                    "accuracy": 97.5,
                    "params": 85_000,
                    "size_bytes": 340_000,
                    "latency_ms": 0.5,
                },
                student={**STUDENT, "params": 2_400, "size_bytes": size, "latency_ms": 0.1},
                baseline={"accuracy": 92.0, "best_accuracy": 92.0},
                gap=1.5,
                compression=35.4,
                gates={"passed": True, "checks": []},
            ),
        )
    )
    job.status = JobStatus.succeeded
    db.commit()
    return job.id


def test_job_lists_its_artifacts_and_evaluation(
    client: TestClient, db: Session, job_id: str
) -> None:
    job = client.get(f"/v1/jobs/{job_id}").json()
    assert job["evaluation"]["gap"] == 1.5 and job["evaluation"]["gate_passed"] is True
    [artifact] = job["artifacts"]
    assert artifact["format"] == "onnx" and artifact["sha256"] == SHA
    assert artifact["download_url"] == f"/v1/jobs/{job_id}/artifacts/onnx"
    assert client.get(f"/v1/jobs/{job_id}/artifacts").json() == job["artifacts"]
    stored = db.get(Evaluation, job_id)
    assert stored is not None
    assert client.get(f"/v1/jobs/{job_id}/report").json() == {"report": stored.report}


def test_full_download(client: TestClient, job_id: str) -> None:
    r = client.get(f"/v1/jobs/{job_id}/artifacts/onnx")
    assert r.status_code == 200
    assert hashlib.sha256(r.content).hexdigest() == SHA
    assert r.headers["etag"] == f'"{SHA}"'
    assert r.headers["content-length"] == str(len(CONTENT))
    assert r.headers["content-disposition"] == 'attachment; filename="my_digits_kd-student.onnx"'
    assert r.headers["accept-ranges"] == "bytes"
    assert r.headers["content-type"] == "application/octet-stream"


def test_head_gives_the_headers_only(client: TestClient, job_id: str) -> None:
    r = client.head(f"/v1/jobs/{job_id}/artifacts/onnx")
    assert r.status_code == 200 and r.content == b""
    assert r.headers["content-length"] == str(len(CONTENT))


def test_ranges_reassemble_the_file(client: TestClient, job_id: str) -> None:
    url = f"/v1/jobs/{job_id}/artifacts/onnx"
    first = client.get(url, headers={"Range": "bytes=0-4095"})
    assert first.status_code == 206
    assert first.headers["content-range"] == f"bytes 0-4095/{len(CONTENT)}"
    assert first.headers["content-length"] == "4096"
    middle = client.get(url, headers={"Range": "bytes=4096-8191"})
    rest = client.get(url, headers={"Range": "bytes=8192-"})
    assert rest.status_code == 206
    assert rest.headers["content-range"] == f"bytes 8192-9999/{len(CONTENT)}"
    assert first.content + middle.content + rest.content == CONTENT


def test_range_past_the_end_is_416(client: TestClient, job_id: str) -> None:
    r = client.get(f"/v1/jobs/{job_id}/artifacts/onnx", headers={"Range": "bytes=20000-"})
    assert r.status_code == 416
    assert r.headers["content-range"] == f"bytes */{len(CONTENT)}"


def test_if_none_match_is_304(client: TestClient, job_id: str) -> None:
    url = f"/v1/jobs/{job_id}/artifacts/onnx"
    r = client.get(url, headers={"If-None-Match": f'"{SHA}"'})
    assert r.status_code == 304 and r.content == b""
    assert r.headers["etag"] == f'"{SHA}"'
    assert client.get(url, headers={"If-None-Match": '"other"'}).status_code == 200


def test_unknown_format_lists_the_ones_there_are(client: TestClient, job_id: str) -> None:
    r = client.get(f"/v1/jobs/{job_id}/artifacts/tflite")
    assert r.status_code == 404
    assert r.json()["available"] == ["onnx"]
    assert "available: onnx" in r.json()["detail"]


def test_missing_blob_is_a_clear_404(
    app: FastAPI, client: TestClient, db: Session, job_id: str
) -> None:
    app.state.blobs.path(SHA).unlink()
    r = client.get(f"/v1/jobs/{job_id}/artifacts/onnx")
    assert r.status_code == 404 and r.json()["code"] == "blob_missing"


def test_report_before_evaluation_is_404(client: TestClient, new_spec: Any) -> None:
    job_id = client.post("/v1/jobs", json=new_spec()).json()["id"]
    r = client.get(f"/v1/jobs/{job_id}/report")
    assert r.status_code == 404 and "no evaluation yet" in r.json()["detail"]
    assert client.get(f"/v1/jobs/{job_id}/artifacts").json() == []
    none = client.get(f"/v1/jobs/{job_id}/artifacts/onnx").json()
    assert none["available"] == [] and "no artifacts yet" in none["detail"]
