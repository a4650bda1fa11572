"""Submitting, listing, cancelling and retrying jobs against real PostgreSQL and Redis."""

from __future__ import annotations

import base64
import json
import uuid
from pathlib import Path
from typing import Any

from fastapi.testclient import TestClient
from sqlalchemy.orm import Session

from api.main import create_app
from store import jobs as store_jobs
from store.models import Job, JobStatus
from store.settings import Settings


def _loc_msgs(response: Any) -> dict[str, str]:
    assert response.status_code == 422, response.text
    return {d["loc"]: d["msg"] for d in response.json()["detail"]}


# --- submit -----------------------------------------------------------------------------------


def test_submit_stores_the_job_and_puts_its_id_on_the_queue(
    client: TestClient, db: Session, queued: Any, new_spec: Any
) -> None:
    r = client.post("/v1/jobs", json=new_spec(train={"epochs": 2, "max_runtime_s": 600}))
    assert r.status_code == 201, r.text
    body = r.json()
    assert body["status"] == "queued"
    assert body["attempts"] == 0
    assert body["enqueued_at"] is not None
    assert body["spec"]["train"]["epochs"] == 2
    assert body["evaluation"] is None and body["artifacts"] == []

    job = db.get(Job, body["id"])
    assert job is not None and job.status == JobStatus.queued and job.enqueued_at is not None

    messages = queued()
    assert len(messages) == 1
    assert messages[0]["args"] == [body["id"]]
    assert messages[0]["headers"]["task"] == "distillery.run_job"
    assert messages[0]["headers"]["timelimit"] == [660, 600]  # hard, soft


def test_submit_with_the_broker_down_still_creates_the_job(
    settings: Settings, new_spec: Any
) -> None:
    down = settings.model_copy(update={"broker_url": "redis://127.0.0.1:1/0"})
    with TestClient(create_app(down)) as client:
        r = client.post("/v1/jobs", json=new_spec())
        assert r.status_code == 201, r.text
        job = r.json()
        assert job["status"] == "queued" and job["enqueued_at"] is None
        events = client.get(f"/v1/jobs/{job['id']}/events").json()["items"]
    assert [e["kind"] for e in events] == ["status", "broker"]
    assert "broker" in events[1]["message"] and "enqueued again" in events[1]["message"]


def test_unknown_method_names_the_field(client: TestClient, new_spec: Any) -> None:
    r = client.post("/v1/jobs", json=new_spec(method={"name": "nope"}))
    errors = _loc_msgs(r)
    assert "method.name" in errors and "known:" in errors["method.name"]
    assert r.json()["code"] == "invalid_spec"
    assert "method.name:" in r.json()["message"]


def test_schema_errors_name_every_field(client: TestClient, new_spec: Any) -> None:
    spec = new_spec(train={"epochs": 0, "optimiser": {}})
    del spec["student"]
    errors = _loc_msgs(client.post("/v1/jobs", json=spec))
    assert set(errors) >= {"student", "train.epochs", "train.optimiser"}
    assert "unknown key" in errors["train.optimiser"]


def test_a_body_that_is_not_a_spec_object_is_422(client: TestClient) -> None:
    assert "(root)" in _loc_msgs(client.post("/v1/jobs", content=b"{not json"))
    assert "(root)" in _loc_msgs(client.post("/v1/jobs", json=[1, 2]))
    assert "(root)" in _loc_msgs(client.post("/v1/jobs", content=b""))


def test_unknown_upload_is_422_with_the_field(client: TestClient, new_spec: Any) -> None:
    spec = new_spec(teacher={"onnx": "upload:abc"})
    errors = _loc_msgs(client.post("/v1/jobs", json=spec))
    assert errors["teacher.onnx"].startswith("upload 'abc' does not exist; POST /v1/uploads")


def test_upload_of_the_wrong_kind_is_422(
    client: TestClient, new_spec: Any, upload_file: Any
) -> None:
    dataset = upload_file(b"x" * 100, "dataset", "d.npz").json()
    errors = _loc_msgs(client.post("/v1/jobs", json=new_spec(teacher={"onnx": dataset["ref"]})))
    assert "is a dataset, but this field needs a model" in errors["teacher.onnx"]


def test_dataset_upload_with_an_unreadable_suffix_is_422(
    client: TestClient, new_spec: Any, upload_file: Any
) -> None:
    dataset = upload_file(b"y" * 100, "dataset", "data.txt").json()
    errors = _loc_msgs(client.post("/v1/jobs", json=new_spec(data={"source": dataset["ref"]})))
    assert ".npz" in errors["data.source"]


def test_uploaded_files_are_accepted(
    client: TestClient, new_spec: Any, upload_file: Any, queued: Any
) -> None:
    model = upload_file(b"onnx bytes " * 10, "model", "teacher.onnx").json()
    dataset = upload_file(b"npz bytes " * 10, "dataset", "train.npz").json()
    spec = new_spec(teacher={"onnx": model["ref"]}, data={"source": dataset["ref"]})
    r = client.post("/v1/jobs", json=spec)
    assert r.status_code == 201, r.text
    assert r.json()["spec"]["teacher"]["onnx"] == f"upload:{model['id']}"
    assert [m["args"] for m in queued()] == [[r.json()["id"]]]


def test_local_paths_are_refused(client: TestClient, new_spec: Any) -> None:
    spec = new_spec(
        data={"source": "/etc/passwd.csv"},
        teacher={"arch": "mlp", "checkpoint": "/srv/teacher.pt"},
    )
    errors = _loc_msgs(client.post("/v1/jobs", json=spec))
    assert set(errors) == {"data.source", "teacher.checkpoint"}
    assert all("use upload:<id>" in msg for msg in errors.values())


def test_runtime_above_the_service_limit_is_422(
    client: TestClient, settings: Settings, new_spec: Any
) -> None:
    too_long = settings.max_job_runtime_s + 1
    errors = _loc_msgs(client.post("/v1/jobs", json=new_spec(train={"max_runtime_s": too_long})))
    assert str(settings.max_job_runtime_s) in errors["train.max_runtime_s"]


# --- list and get -----------------------------------------------------------------------------


def test_list_pages_newest_first_without_repeats(client: TestClient, new_spec: Any) -> None:
    name = f"paged-{uuid.uuid4().hex[:8]}"
    submitted = [client.post("/v1/jobs", json=new_spec(name)).json()["id"] for _ in range(5)]
    seen: list[str] = []
    cursor = None
    pages = 0
    while True:
        params: dict[str, Any] = {"name": name, "limit": 2}
        if cursor:
            params["cursor"] = cursor
        page = client.get("/v1/jobs", params=params).json()
        pages += 1
        seen += [item["id"] for item in page["items"]]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert pages == 3
    assert seen == list(reversed(submitted))
    assert len(set(seen)) == 5


def test_list_filters_by_status(client: TestClient, new_spec: Any) -> None:
    name = f"filtered-{uuid.uuid4().hex[:8]}"
    a, b = (client.post("/v1/jobs", json=new_spec(name)).json()["id"] for _ in range(2))
    client.post(f"/v1/jobs/{a}/cancel")
    cancelled = client.get("/v1/jobs", params={"name": name, "status": "cancelled"}).json()
    assert [j["id"] for j in cancelled["items"]] == [a]
    still = client.get("/v1/jobs", params={"name": name, "status": "queued"}).json()
    assert [j["id"] for j in still["items"]] == [b]
    assert cancelled["next_cursor"] is None


def test_list_rejects_bad_parameters(client: TestClient) -> None:
    assert "query.status" in _loc_msgs(client.get("/v1/jobs", params={"status": "sleeping"}))
    errors = _loc_msgs(client.get("/v1/jobs", params={"cursor": "garbage!"}))
    assert "next_cursor" in errors["query.cursor"]
    assert "query.limit" in _loc_msgs(client.get("/v1/jobs", params={"limit": 201}))


def test_a_crafted_cursor_without_a_time_zone_is_422_not_500(client: TestClient) -> None:
    naive = json.dumps(["2026-01-01T00:00:00", "abc"]).encode()
    cursor = base64.urlsafe_b64encode(naive).decode().rstrip("=")
    assert (
        "next_cursor"
        in _loc_msgs(client.get("/v1/jobs", params={"cursor": cursor}))["query.cursor"]
    )


def test_unknown_job_is_404(client: TestClient) -> None:
    for path in ("", "/events", "/metrics", "/artifacts", "/stream", "/report"):
        r = client.get(f"/v1/jobs/nope{path}")
        assert r.status_code == 404, path
        assert r.json() == {"detail": "job 'nope' not found", "code": "not_found"}
    assert client.post("/v1/jobs/nope/cancel").status_code == 404
    assert client.post("/v1/jobs/nope/retry").status_code == 404


# --- cancel and retry -------------------------------------------------------------------------


def test_cancel_queued_then_again_is_unchanged(client: TestClient, new_spec: Any) -> None:
    job_id = client.post("/v1/jobs", json=new_spec()).json()["id"]
    r = client.post(f"/v1/jobs/{job_id}/cancel")
    assert r.status_code == 200 and r.json()["status"] == "cancelled"
    assert r.json()["finished_at"] is not None
    again = client.post(f"/v1/jobs/{job_id}/cancel")
    assert again.status_code == 200 and again.json() == r.json()


def test_cancel_running_asks_it_to_stop(client: TestClient, db: Session, new_spec: Any) -> None:
    job_id = client.post("/v1/jobs", json=new_spec()).json()["id"]
    assert store_jobs.claim(db, job_id, "w1", lease_s=60) is not None
    db.commit()
    r = client.post(f"/v1/jobs/{job_id}/cancel")
    assert r.json()["status"] == "cancelling"


def test_retry_is_a_new_attempt(
    client: TestClient, db: Session, queued: Any, new_spec: Any
) -> None:
    job_id = client.post("/v1/jobs", json=new_spec()).json()["id"]
    claim = store_jobs.claim(db, job_id, "w1", lease_s=60)
    assert claim is not None
    store_jobs.finish(db, claim, JobStatus.failed, "boom", error_code="crash")
    db.commit()
    failed = client.get(f"/v1/jobs/{job_id}").json()
    assert (failed["status"], failed["attempts"], failed["error_code"]) == ("failed", 1, "crash")

    r = client.post(f"/v1/jobs/{job_id}/retry")
    assert r.status_code == 200, r.text
    retried = r.json()
    assert retried["status"] == "queued"
    assert retried["error_code"] is None and retried["finished_at"] is None
    assert retried["progress"] == 0.0
    assert retried["attempts"] == 1  # counts starts: goes up when a worker claims it again
    assert [m["args"] for m in queued()] == [[job_id], [job_id]]

    db.expire_all()
    second = store_jobs.claim(db, job_id, "w2", lease_s=60)
    db.commit()
    assert second is not None and second.attempt == 2


def test_retry_cancelled_requeues_it(client: TestClient, queued: Any, new_spec: Any) -> None:
    job_id = client.post("/v1/jobs", json=new_spec()).json()["id"]
    client.post(f"/v1/jobs/{job_id}/cancel")
    r = client.post(f"/v1/jobs/{job_id}/retry")
    assert r.status_code == 200 and r.json()["status"] == "queued"
    assert len(queued()) == 2


def test_retry_of_a_queued_job_is_409_naming_the_state(client: TestClient, new_spec: Any) -> None:
    job_id = client.post("/v1/jobs", json=new_spec()).json()["id"]
    r = client.post(f"/v1/jobs/{job_id}/retry")
    assert r.status_code == 409
    body = r.json()
    assert body["detail"] == "cannot retry a job that is queued"
    assert body["status"] == "queued"


def test_events_are_ordered(client: TestClient, new_spec: Any) -> None:
    job_id = client.post("/v1/jobs", json=new_spec()).json()["id"]
    client.post(f"/v1/jobs/{job_id}/cancel")
    client.post(f"/v1/jobs/{job_id}/retry")
    events = client.get(f"/v1/jobs/{job_id}/events").json()["items"]
    assert [e["status"] for e in events] == ["queued", "cancelled", "queued"]
    assert [e["id"] for e in events] == sorted(e["id"] for e in events)
    assert [e["at"] for e in events] == sorted(e["at"] for e in events)
    later = client.get(f"/v1/jobs/{job_id}/events", params={"after": events[0]["id"]}).json()
    assert [e["id"] for e in later["items"]] == [e["id"] for e in events[1:]]


def test_embedded_mode_needs_no_servers(tmp_path: Path, new_spec: Any) -> None:
    """Default settings (SQLite, filesystem broker): the schema is created by create_app."""
    with TestClient(create_app(Settings(data_dir=tmp_path, auth="none"))) as client:
        r = client.post("/v1/jobs", json=new_spec())
        assert r.status_code == 201, r.text
        assert r.json()["enqueued_at"] is not None
        assert client.get(f"/v1/jobs/{r.json()['id']}").json()["status"] == "queued"
        assert client.get("/readyz").status_code == 200
    assert list((tmp_path / "broker" / "queue").iterdir())  # the message, on disk


def test_text_the_database_cannot_hold_is_422_not_500(client: TestClient, new_spec: Any) -> None:
    for r in (
        client.get("/v1/jobs/a%00b"),
        client.get("/v1/jobs", params={"name": "a\x00b"}),
        client.post("/v1/jobs", json=new_spec("nul\x00name")),
    ):
        assert r.status_code == 422, r.text
        assert "NUL" in r.json()["detail"][0]["msg"]


def test_an_oversized_spec_is_413(client: TestClient, new_spec: Any) -> None:
    spec = new_spec(student={"arch": "mlp", "kwargs": {"pad": "x" * (2 << 20)}})
    r = client.post("/v1/jobs", json=spec)
    assert r.status_code == 413 and "/v1/uploads" in r.json()["detail"]


def test_database_down_is_503(settings: Settings) -> None:
    down = settings.model_copy(
        update={"database_url": "postgresql+psycopg://postgres@127.0.0.1:1/nothing"}
    )
    with TestClient(create_app(down)) as client:
        r = client.get("/v1/jobs")
    assert r.status_code == 503
    assert r.json()["code"] == "database_unavailable" and r.headers["retry-after"] == "5"
