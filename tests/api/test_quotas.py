"""Quotas per project and request rate limits: each one exceeded is a 429 with `Retry-After` and
a body naming the quota and its limit; a project's overrides beat the service's settings, and
one project at its limit leaves the others alone."""

from __future__ import annotations

from collections.abc import Callable
from datetime import timedelta
from typing import Any

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from api.main import create_app
from api.ratelimit import LocalLimiter, RedisLimiter
from store.models import JobStatus, utcnow
from store.settings import Settings

from ._projects import Project, another_key, new_project, set_job, status_event


def submit(http: TestClient, project: Project, new_spec: Callable[..., Any], **headers: str) -> Any:
    return http.post("/v1/jobs", json=new_spec(), headers={**project.headers, **headers})


def assert_quota_429(r: Any, quota: str, limit: float, used: float) -> dict[str, Any]:
    assert r.status_code == 429, r.text
    body = r.json()
    assert body["code"] == "quota_exceeded"
    assert (body["quota"], body["limit"], body["used"]) == (quota, limit, used)
    assert int(r.headers["retry-after"]) == body["retry_after"] >= 1
    return body


def test_queued_jobs_quota(keyed_app: FastAPI, http: TestClient, new_spec: Any) -> None:
    team = new_project(keyed_app, quotas={"max_queued_jobs": 2})
    other = new_project(keyed_app)
    first = submit(http, team, new_spec, **{"Idempotency-Key": "first"})
    assert first.status_code == 201
    assert submit(http, team, new_spec).status_code == 201
    body = assert_quota_429(submit(http, team, new_spec), "max_queued_jobs", 2, 2)
    assert body["retry_after"] == 60 and "queued" in body["detail"]
    # a replay of an existing job starts nothing: not refused
    again = http.post(
        "/v1/jobs",
        json=http.get(f"/v1/jobs/{first.json()['id']}", headers=team.headers).json()["spec"],
        headers={**team.headers, "Idempotency-Key": "first"},
    )
    assert again.status_code == 200
    assert submit(http, other, new_spec).status_code == 201  # the service has no limit
    # one leaves the queue: room again
    http.post(f"/v1/jobs/{first.json()['id']}/cancel", headers=team.headers)
    assert submit(http, team, new_spec).status_code == 201


def test_running_jobs_quota(keyed_app: FastAPI, http: TestClient, new_spec: Any) -> None:
    team = new_project(keyed_app, quotas={"max_running_jobs": 1})
    job = submit(http, team, new_spec).json()
    assert submit(http, team, new_spec).status_code == 201  # queued ones do not count
    set_job(keyed_app, job["id"], status=JobStatus.running)
    body = assert_quota_429(submit(http, team, new_spec), "max_running_jobs", 1, 1)
    assert "running" in body["detail"]
    set_job(keyed_app, job["id"], status=JobStatus.cancelling)  # still on its GPU
    assert submit(http, team, new_spec).status_code == 429
    set_job(keyed_app, job["id"], status=JobStatus.cancelled)
    assert submit(http, team, new_spec).status_code == 201


def test_gpu_seconds_per_day_quota(keyed_app: FastAPI, http: TestClient, new_spec: Any) -> None:
    """One attempt ran from 2 h to 1 h ago (3600 s) against a limit of 1800 s a day: refused
    until enough of that hour has left the 24 h window (22.5 h from now)."""
    team = new_project(keyed_app, quotas={"max_gpu_seconds_per_day": 1800})
    job = submit(http, team, new_spec).json()
    now = utcnow()
    status_event(keyed_app, job["id"], JobStatus.running, now - timedelta(hours=2))
    status_event(keyed_app, job["id"], JobStatus.succeeded, now - timedelta(hours=1))
    set_job(keyed_app, job["id"], status=JobStatus.succeeded, finished_at=now - timedelta(hours=1))
    body = assert_quota_429(submit(http, team, new_spec), "max_gpu_seconds_per_day", 1800, 3600)
    assert abs(body["retry_after"] - 22.5 * 3600) < 120
    assert "GPU-seconds" in body["detail"]


def test_storage_quota_refuses_jobs_and_uploads(
    keyed_app: FastAPI, http: TestClient, new_spec: Any
) -> None:
    team = new_project(keyed_app, quotas={"max_storage_bytes": 100})

    def upload(content: bytes) -> Any:
        return http.post(
            "/v1/uploads",
            files={"file": ("d.npz", content, "application/octet-stream")},
            data={"kind": "dataset"},
            headers=team.headers,
        )

    assert upload(b"a" * 60).status_code == 201  # 60 of 100 bytes
    assert submit(http, team, new_spec).status_code == 201
    assert upload(b"b" * 60).status_code == 201  # room when it started; now 120
    body = assert_quota_429(upload(b"c" * 10), "max_storage_bytes", 100, 120)
    assert "DELETE /v1/uploads" in body["detail"]
    assert_quota_429(submit(http, team, new_spec), "max_storage_bytes", 100, 120)


def test_retry_is_held_to_the_quotas(keyed_app: FastAPI, http: TestClient, new_spec: Any) -> None:
    team = new_project(keyed_app, quotas={"max_queued_jobs": 1})
    failed = submit(http, team, new_spec).json()
    set_job(keyed_app, failed["id"], status=JobStatus.failed, finished_at=utcnow())
    assert submit(http, team, new_spec).status_code == 201  # the queue is full now
    r = http.post(f"/v1/jobs/{failed['id']}/retry", headers=team.headers)
    assert_quota_429(r, "max_queued_jobs", 1, 1)
    # a retry that is refused for its state says so, whatever the quotas
    queued = http.get("/v1/jobs?status=queued", headers=team.headers).json()["items"][0]
    assert http.post(f"/v1/jobs/{queued['id']}/retry", headers=team.headers).status_code == 409


def test_service_settings_apply_unless_the_project_overrides_them(
    settings: Settings, new_spec: Any
) -> None:
    app = create_app(settings.model_copy(update={"auth": "keys", "max_queued_jobs": 1}))
    limited = new_project(app)
    unlimited = new_project(app, quotas={"max_queued_jobs": None})
    larger = new_project(app, quotas={"max_queued_jobs": 2})
    with TestClient(app) as http:
        for project, allowed in ((limited, 1), (unlimited, 3), (larger, 2)):
            codes = [submit(http, project, new_spec).status_code for _ in range(3)]
            assert codes == [201] * allowed + [429] * (3 - allowed), project


# --- request rate -----------------------------------------------------------------------------


class Clock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


def test_rate_limit_per_key_in_redis(settings: Settings) -> None:
    """3 requests a minute: a burst of 3, then one every 20 s; each key has its own bucket."""
    app = create_app(settings.model_copy(update={"auth": "keys", "rate_limit_per_minute": 3}))
    clock = app.state.clock = Clock()
    team = new_project(app)
    second = another_key(app, team)
    with TestClient(app) as http:
        assert [http.get("/v1/jobs", headers=team.headers).status_code for _ in range(3)] == [
            200
        ] * 3
        r = http.get("/v1/jobs", headers=team.headers)
        assert r.status_code == 429 and r.json()["code"] == "rate_limited"
        assert r.headers["retry-after"] == "20" and r.json()["limit"] == 3
        assert http.get("/v1/jobs", headers=second.headers).status_code == 200
        clock.now += 19
        assert http.get("/v1/jobs", headers=team.headers).status_code == 429
        assert http.get("/v1/jobs", headers=team.headers).headers["retry-after"] == "1"
        clock.now += 1
        assert http.get("/v1/jobs", headers=team.headers).status_code == 200
        assert http.get("/healthz").status_code == 200  # probes are not limited
    assert isinstance(app.state.rate_limiter, RedisLimiter)


def test_a_projects_rate_limit_overrides_the_service(settings: Settings) -> None:
    app = create_app(settings.model_copy(update={"auth": "keys"}))
    app.state.clock = Clock()
    slow = new_project(app, quotas={"rate_limit_per_minute": 1})
    free = new_project(app)
    with TestClient(app) as http:
        assert http.get("/v1/jobs", headers=slow.headers).status_code == 200
        r = http.get("/v1/jobs", headers=slow.headers)
        assert r.status_code == 429 and r.headers["retry-after"] == "60"
        assert all(http.get("/v1/jobs", headers=free.headers).status_code == 200 for _ in range(5))


def test_rate_limit_without_keys_is_per_client_and_in_process_without_redis(
    settings: Settings,
) -> None:
    """The embedded broker (no Redis): buckets in the API process; without keys, per address."""
    app = create_app(
        settings.model_copy(update={"broker_url": "memory://", "rate_limit_per_minute": 2})
    )
    app.state.clock = Clock()
    with TestClient(app) as http:
        codes = [http.get("/v1/jobs").status_code for _ in range(3)]
    assert codes == [200, 200, 429]
    assert isinstance(app.state.rate_limiter, LocalLimiter)


def test_an_unreachable_redis_does_not_block_requests(settings: Settings) -> None:
    limiter = RedisLimiter("redis://127.0.0.1:1/0", "test")
    assert limiter.acquire("key:x", 1, 0.0) == 0.0
    assert limiter.acquire("key:x", 1, 0.0) == 0.0


def test_local_and_redis_buckets_agree(settings: Settings) -> None:
    redis_limiter = RedisLimiter(settings.broker_url, f"{settings.queue}:ratelimit")
    local = LocalLimiter()
    times = [0.0, 0.0, 0.0, 0.0, 10.0, 30.0, 30.0, 100.0, 100.0, 100.0, 100.0]
    got = [(local.acquire("b", 3, t), redis_limiter.acquire("b", 3, t)) for t in times]
    for a, b in got:
        assert a == pytest.approx(b)
    assert [round(a, 3) for a, _ in got] == [0, 0, 0, 20, 10, 0, 10, 0, 0, 0, 20]
