"""API keys with an expiry date, a scope and a last-use time: an expired key is a 401 saying
so, a read-only key reads (200) but cannot change anything (403), and `last_used_at` is written
on use, at most once a minute per key."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from fastapi import FastAPI
from fastapi.testclient import TestClient
from sqlalchemy import select

from store.auth import TOUCH_EVERY, authenticate, check_key, key_state
from store.models import ApiKey, JobStatus, KeyScope, utcnow

from ._projects import add_artifact, another_key, new_project, set_job


def test_an_expired_key_is_401_and_says_it_expired(keyed_app: FastAPI, http: TestClient) -> None:
    team = new_project(keyed_app, expires_at=utcnow() + timedelta(days=1))
    old = another_key(keyed_app, team, expires_at=utcnow() - timedelta(seconds=1))
    assert http.get("/v1/jobs", headers=team.headers).status_code == 200
    r = http.get("/v1/jobs", headers=old.headers)
    assert r.status_code == 401 and r.json()["code"] == "unauthorized"
    assert "expired" in r.json()["detail"] and r.headers["www-authenticate"].startswith("Bearer")
    with keyed_app.state.sessions() as s:
        assert authenticate(s, old.key) is None
        # the key works until its time comes, and not from then on
        assert check_key(s, team.key, now=utcnow() + timedelta(hours=23)) is not None
        assert authenticate(s, team.key, now=utcnow() + timedelta(days=1, seconds=1)) is None
        row = s.get(ApiKey, old.key_id)
        assert row is not None and key_state(row) == "expired"


def test_a_read_only_key_reads_but_cannot_write(
    keyed_app: FastAPI, http: TestClient, new_spec: Any
) -> None:
    writer = new_project(keyed_app)
    reader = another_key(keyed_app, writer, scope=KeyScope.read)
    job = http.post("/v1/jobs", json=new_spec(), headers=writer.headers).json()
    set_job(keyed_app, job["id"], status=JobStatus.succeeded, finished_at=utcnow())
    add_artifact(keyed_app, job["id"], b"student bytes")
    reads = [
        "/v1/jobs",
        f"/v1/jobs/{job['id']}",
        f"/v1/jobs/{job['id']}/events",
        f"/v1/jobs/{job['id']}/metrics",
        f"/v1/jobs/{job['id']}/artifacts",
        f"/v1/jobs/{job['id']}/artifacts/onnx",
    ]
    for path in reads:
        assert http.get(path, headers=reader.headers).status_code == 200, path
    assert http.head(f"/v1/jobs/{job['id']}/artifacts/onnx", headers=reader.headers).is_success
    writes = [
        ("POST", "/v1/jobs", {"json": new_spec()}),
        ("POST", f"/v1/jobs/{job['id']}/cancel", {}),
        ("POST", f"/v1/jobs/{job['id']}/retry", {}),
        ("DELETE", f"/v1/jobs/{job['id']}", {}),
        ("DELETE", "/v1/uploads/0123", {}),
        ("POST", "/v1/uploads", {"files": {"file": ("m.pt", b"x")}, "data": {"kind": "model"}}),
    ]
    for method, path, body in writes:
        r = http.request(method, path, headers=reader.headers, **body)
        assert r.status_code == 403, (method, path, r.text)
        assert r.json()["code"] == "read_only_key" and "read-only" in r.json()["detail"]
    # nothing changed: one job, still there, still succeeded
    assert [j["status"] for j in http.get("/v1/jobs", headers=writer.headers).json()["items"]] == [
        "succeeded"
    ]


def test_last_used_at_is_recorded_at_most_once_a_minute(
    keyed_app: FastAPI, http: TestClient
) -> None:
    team = new_project(keyed_app)

    def last_used() -> Any:
        with keyed_app.state.sessions() as s:
            return s.scalars(select(ApiKey.last_used_at).where(ApiKey.id == team.key_id)).one()

    assert last_used() is None
    assert http.get("/v1/jobs", headers=team.headers).status_code == 200
    first = last_used()
    assert first is not None and abs((utcnow() - first).total_seconds()) < 60
    with keyed_app.state.sessions() as s:
        check_key(s, team.key, now=first + TOUCH_EVERY - timedelta(seconds=1))
        assert last_used() == first  # within the minute: no write
        later = first + TOUCH_EVERY + timedelta(seconds=1)
        check_key(s, team.key, now=later)
        assert last_used() == later
