"""API keys and projects: 401 without a valid key, and a project sees only its own jobs,
uploads and artifacts (another project's are 404, exactly like ids that do not exist)."""

from __future__ import annotations

import hashlib
import uuid
from typing import Any

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from sqlalchemy import select

from store.auth import create_key, hash_key, revoke_key
from store.models import ApiKey, Artifact, Evaluation, JobStatus

from ._reports import STUDENT, make_report


def make_spec(**sections: Any) -> dict[str, Any]:
    """The small spec of the API tests, with a name of its own."""
    spec: dict[str, Any] = {
        "name": unique_name("job"),
        "teacher": {"arch": "mlp", "kwargs": {"hidden": [64]}, "train": {"epochs": 1}},
        "student": {"arch": "mlp", "kwargs": {"hidden": [16]}},
        "data": {"source": "digits"},
        "method": {"name": "kd", "temperature": 4.0, "alpha": 0.9},
        "train": {"epochs": 1},
    }
    spec.update(sections)
    return spec


def unique_name(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


@pytest.fixture
def keys(keyed_app: FastAPI) -> dict[str, str]:
    """A key for each of two fresh projects, "a" and "b" (names unique to this test)."""
    out = {}
    with keyed_app.state.sessions() as s:
        for label in ("a", "b"):
            _, key = create_key(s, unique_name(f"project-{label}"))
            out[label] = key
        s.commit()
    return out


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def test_a_request_without_a_key_is_401_and_says_how_to_get_one(http: TestClient) -> None:
    r = http.get("/v1/jobs")
    assert r.status_code == 401
    assert r.headers["www-authenticate"].startswith("Bearer")
    assert r.json()["code"] == "unauthorized"
    assert "distill keys create" in r.json()["detail"]


@pytest.mark.parametrize(
    "header", ["Bearer", "Basic dXNlcjpwYXNz", "Bearer dk_not-a-key", "bearer  "]
)
def test_a_malformed_or_unknown_key_is_401(http: TestClient, header: str) -> None:
    r = http.get("/v1/jobs", headers={"Authorization": header})
    assert r.status_code == 401, r.text


def test_auth_comes_before_the_body_is_looked_at(http: TestClient) -> None:
    assert http.post("/v1/jobs", content=b"{not json").status_code == 401
    assert http.post("/v1/uploads", content=b"x").status_code == 401


def test_probes_and_docs_need_no_key(http: TestClient) -> None:
    assert http.get("/healthz").status_code == 200
    assert http.get("/readyz").status_code == 200
    doc = http.get("/openapi.json").json()
    assert "HTTPBearer" in doc["components"]["securitySchemes"]
    assert "401" in doc["paths"]["/v1/jobs"]["get"]["responses"]


def test_keys_are_stored_hashed_and_can_be_revoked(
    keyed_app: FastAPI, http: TestClient, keys: dict[str, str]
) -> None:
    assert http.get("/v1/jobs", headers=bearer(keys["a"])).status_code == 200
    with keyed_app.state.sessions() as s:
        row = s.scalars(select(ApiKey).where(ApiKey.key_hash == hash_key(keys["a"]))).one()
        assert keys["a"] not in (row.key_hash, row.prefix) and keys["a"].startswith(row.prefix)
        assert row.last_used_at is not None  # recorded on use
        revoke_key(s, row.id)
        s.commit()
    r = http.get("/v1/jobs", headers=bearer(keys["a"]))
    assert r.status_code == 401 and "revoked" in r.json()["detail"]
    assert http.get("/v1/jobs", headers=bearer(keys["b"])).status_code == 200


def test_jobs_belong_to_the_project_of_the_key(http: TestClient, keys: dict[str, str]) -> None:
    a, b = bearer(keys["a"]), bearer(keys["b"])
    job = http.post("/v1/jobs", json=make_spec(), headers=a).json()
    assert job["owner"].startswith("project-a")
    assert [j["id"] for j in http.get("/v1/jobs", headers=a).json()["items"]] == [job["id"]]
    assert http.get("/v1/jobs", headers=b).json()["items"] == []


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("GET", "/v1/jobs/{id}"),
        ("POST", "/v1/jobs/{id}/cancel"),
        ("POST", "/v1/jobs/{id}/retry"),
        ("GET", "/v1/jobs/{id}/events"),
        ("GET", "/v1/jobs/{id}/metrics"),
        ("GET", "/v1/jobs/{id}/report"),
        ("GET", "/v1/jobs/{id}/stream"),
        ("GET", "/v1/jobs/{id}/artifacts"),
        ("GET", "/v1/jobs/{id}/artifacts/onnx"),
        ("HEAD", "/v1/jobs/{id}/artifacts/onnx"),
    ],
)
def test_another_projects_job_is_404_everywhere(
    keyed_app: FastAPI, http: TestClient, keys: dict[str, str], method: str, path: str
) -> None:
    a, b = bearer(keys["a"]), bearer(keys["b"])
    job_id = http.post("/v1/jobs", json=make_spec(), headers=a).json()["id"]
    _succeed_with_artifact(keyed_app, job_id)
    url = path.format(id=job_id)
    other = http.request(method, url, headers=b)
    assert other.status_code == 404, other.text
    missing = http.request(method, path.format(id="0" * 32), headers=b)
    if method != "HEAD":  # the same answer as for a job that does not exist
        assert other.json()["code"] == missing.json()["code"] == "not_found"
    assert http.request(method, url, headers=a).status_code in (200, 409)  # retry: 409
    with keyed_app.state.sessions() as s:  # b's cancel changed nothing
        from store.models import Job

        assert s.get(Job, job_id).status == JobStatus.succeeded


def test_uploads_belong_to_the_project_of_the_key(http: TestClient, keys: dict[str, str]) -> None:
    a, b = bearer(keys["a"]), bearer(keys["b"])
    content = b"x_train" * 50
    sha = hashlib.sha256(content).hexdigest()
    up = http.post(
        "/v1/uploads",
        files={"file": ("d.npz", content, "application/octet-stream")},
        data={"kind": "dataset"},
        headers=a,
    ).json()
    assert http.get(f"/v1/uploads/{up['id']}", headers=a).status_code == 200
    assert http.get(f"/v1/uploads/{up['id']}", headers=b).status_code == 404
    assert [u["id"] for u in _find(http, sha, a)] == [up["id"]]
    assert _find(http, sha, b) == []
    # b cannot use a's upload in a spec either: it does not exist for b
    spec = make_spec(data={"source": up["ref"]})
    r = http.post("/v1/jobs", json=spec, headers=b)
    assert r.status_code == 422 and "does not exist" in r.json()["detail"][0]["msg"]
    assert http.post("/v1/jobs", json=spec, headers=a).status_code == 201
    # the same bytes uploaded by b are b's own upload
    up_b = http.post(
        "/v1/uploads",
        files={"file": ("d.npz", content, "application/octet-stream")},
        data={"kind": "dataset"},
        headers=b,
    )
    assert up_b.status_code == 201 and up_b.json()["id"] != up["id"]


def test_without_keys_every_caller_is_every_owner(client: TestClient) -> None:
    """DISTILLERY_AUTH=none (the other API tests): no header needed, owner is null."""
    r = client.post("/v1/jobs", json=make_spec())
    assert r.status_code == 201 and r.json()["owner"] is None


def _find(http: TestClient, sha: str, headers: dict[str, str]) -> list[dict[str, Any]]:
    r = http.get("/v1/uploads", params={"sha256": sha}, headers=headers)
    assert r.status_code == 200, r.text
    return r.json()["items"]


def _succeed_with_artifact(app: FastAPI, job_id: str) -> None:
    from store.models import Job

    sha, size = app.state.blobs.put_stream(iter([b"onnx bytes"]))
    with app.state.sessions() as s:
        s.add(
            Artifact(
                job_id=job_id,
                format="onnx",
                filename="student.onnx",
                storage_key=sha,
                sha256=sha,
                size_bytes=size,
                max_abs_diff=0.0,
            )
        )
        s.add(
            Evaluation.of(
                job_id,
                make_report(
                    teacher={
                        "source": "train",
                        "accuracy": 97.0,
                        "params": 1000,
                        "size_bytes": 4000,
                        "latency_ms": 0.2,
                    },
                    student={**STUDENT, "size_bytes": size},
                    gap=1.0,
                    compression=10.0,
                ),
            )
        )
        s.get(Job, job_id).status = JobStatus.succeeded
        s.commit()
