"""`Idempotency-Key` on POST /v1/jobs: the same key and spec give back the first job (200,
nothing new queued), the same key with another spec is 409; keys are per project."""

from __future__ import annotations

import uuid
from typing import Any

from fastapi.testclient import TestClient
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from api.main import create_app
from store import idempotency
from store.auth import create_key
from store.models import IdempotencyKey, Job
from store.settings import Settings


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


def key() -> dict[str, str]:
    return {"Idempotency-Key": uuid.uuid4().hex}


def test_a_repeated_request_returns_the_first_job(
    client: TestClient, db: Session, queued: Any
) -> None:
    spec, headers = make_spec(), key()
    first = client.post("/v1/jobs", json=spec, headers=headers)
    again = client.post("/v1/jobs", json=spec, headers=headers)
    assert first.status_code == 201 and "idempotent-replayed" not in first.headers
    assert again.status_code == 200 and again.headers["idempotent-replayed"] == "true"
    assert again.json()["id"] == first.json()["id"]
    assert len(queued()) == 1  # one training, not two
    assert len(db.scalars(select(Job).where(Job.name == spec["name"])).all()) == 1


def test_the_same_spec_written_differently_is_the_same_request(client: TestClient) -> None:
    spec, headers = make_spec(), key()
    first = client.post("/v1/jobs", json=spec, headers=headers).json()
    spelled_out = {**spec, "train": {**spec["train"], "batch_size": 128}}  # 128 is the default
    reordered = dict(reversed(list(spelled_out.items())))
    r = client.post("/v1/jobs", json=reordered, headers=headers)
    assert r.status_code == 200 and r.json()["id"] == first["id"]


def test_the_same_key_with_another_spec_is_409(client: TestClient) -> None:
    spec, headers = make_spec(), key()
    first = client.post("/v1/jobs", json=spec, headers=headers).json()
    r = client.post("/v1/jobs", json={**spec, "train": {"epochs": 5}}, headers=headers)
    assert r.status_code == 409, r.text
    body = r.json()
    assert body["code"] == "idempotency_conflict" and body["job_id"] == first["id"]
    assert "new key" in body["detail"]


def test_without_a_key_every_request_is_a_new_job(client: TestClient) -> None:
    spec = make_spec()
    ids = {client.post("/v1/jobs", json=spec).json()["id"] for _ in range(2)}
    assert len(ids) == 2


def test_a_key_that_cannot_be_stored_is_422(client: TestClient) -> None:
    for bad in ("x" * 256, "tab\there"):
        r = client.post("/v1/jobs", json=make_spec(), headers={"Idempotency-Key": bad})
        assert r.status_code == 422, r.text
        assert r.json()["detail"][0]["loc"] == "header.Idempotency-Key"


def test_an_invalid_spec_does_not_use_up_the_key(client: TestClient) -> None:
    headers = key()
    assert (
        client.post("/v1/jobs", json=make_spec(method={"name": "?"}), headers=headers).status_code
        == 422
    )
    assert client.post("/v1/jobs", json=make_spec(), headers=headers).status_code == 201


def test_keys_are_per_project(settings: Settings) -> None:
    app = create_app(settings.model_copy(update={"auth": "keys"}))
    with app.state.sessions() as s:
        tokens = [create_key(s, unique_name("idem"))[1] for _ in range(2)]
        s.commit()
    spec, headers = make_spec(), key()
    with TestClient(app) as http:
        ids = [
            http.post(
                "/v1/jobs", json=spec, headers={**headers, "Authorization": f"Bearer {t}"}
            ).json()["id"]
            for t in tokens
        ]
    assert ids[0] != ids[1]


def test_the_unique_constraint_settles_a_race(db: Session, client: TestClient) -> None:
    """Two transactions that both found no row for a key: the second insert fails, which is
    how the route knows to answer with the first job (tests/client races real requests)."""
    job_ids = [client.post("/v1/jobs", json=make_spec()).json()["id"] for _ in range(2)]
    k = uuid.uuid4().hex
    idempotency.remember(db, "", k, "d" * 64, job_ids[0])
    db.commit()
    idempotency.remember(db, "", k, "d" * 64, job_ids[1])
    try:
        db.commit()
        raise AssertionError("a second row for the same key was accepted")
    except IntegrityError:
        db.rollback()
    rows = db.scalars(select(IdempotencyKey).where(IdempotencyKey.key == k)).all()
    assert [r.job_id for r in rows] == [job_ids[0]]
