"""Sizes a spec asks for are bounded at submit (issue #11, item 6): each of the issue's five
examples is a 422 naming the field and the limit, no job is stored, and the budget (parameters
per model, training memory) is the service's setting, per project when one is configured."""

from __future__ import annotations

import uuid
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from api.main import create_app
from store.auth import create_key
from store.models import Job
from store.settings import Settings

SYNTHETIC = {"input_shape": [8], "num_classes": 3, "n_train": 64, "n_val": 32}


def synthetic(**changes: Any) -> dict[str, Any]:
    return {"source": "synthetic", "synthetic": {**SYNTHETIC, **changes}}


#: The issue's five examples: (top-level sections replaced, the field named, words of the limit).
EXAMPLES = [
    (
        {"student": {"arch": "mlp", "kwargs": {"hidden": [100000, 100000]}}},
        "student.kwargs",
        "2,000,000,000",
    ),
    ({"data": synthetic(n_train=1e9)}, "data.synthetic.n_train", "1000000"),
    ({"data": synthetic(input_shape=[100000, 100000])}, "data.synthetic.input_shape.0", "4096"),
    ({"data": synthetic(num_classes=1e9)}, "data.synthetic.num_classes", "100000"),
    ({"evaluate": {"latency_batch_size": 1e9}}, "evaluate.latency_batch_size", "4096"),
]


def job_count(db: Session) -> int:
    return db.scalar(select(func.count()).select_from(Job)) or 0


@pytest.mark.parametrize(("sections", "field", "limit"), EXAMPLES)
def test_each_oversized_example_is_422_naming_the_field_and_limit(
    client: TestClient,
    db: Session,
    new_spec: Any,
    sections: dict[str, Any],
    field: str,
    limit: str,
) -> None:
    before = job_count(db)
    r = client.post("/v1/jobs", json=new_spec(**sections))
    assert r.status_code == 422, r.text
    detail = {d["loc"]: d["msg"] for d in r.json()["detail"]}
    assert field in detail, detail
    assert limit in detail[field]
    assert job_count(db) == before


def test_a_too_large_input_for_its_row_count_names_the_synthetic_set(
    client: TestClient, new_spec: Any
) -> None:
    """Each size within its own bound, the set as a whole too large to generate."""
    r = client.post(
        "/v1/jobs", json=new_spec(data=synthetic(input_shape=[3, 512, 512], n_train=1_000_000))
    )
    assert r.status_code == 422, r.text
    (detail,) = r.json()["detail"]
    assert detail["loc"] == "data.synthetic" and "elements" in detail["msg"]


def test_the_budget_is_the_services_setting(settings: Settings, new_spec: Any) -> None:
    """A service configured with a small budget refuses the default test spec's teacher (an MLP
    of about 5k parameters), naming it and the configured limit."""
    small = settings.model_copy(update={"max_model_params": 1000})
    with TestClient(create_app(small)) as client:
        r = client.post("/v1/jobs", json=new_spec())
    assert r.status_code == 422, r.text
    detail = {d["loc"]: d["msg"] for d in r.json()["detail"]}
    assert "4,810 parameters" in detail["teacher.kwargs"]
    assert "limit of 1,000" in detail["teacher.kwargs"]


def test_training_memory_over_the_budget_names_the_batch_size(
    settings: Settings, new_spec: Any
) -> None:
    """A model that fits at a small batch but not at the one asked for: the fix is the batch
    size, and the message gives the largest one that fits."""
    tight = settings.model_copy(update={"max_training_memory_bytes": 8 * 1024**2})
    spec = new_spec(
        teacher={"arch": "convnet", "kwargs": {"channels": [16]}, "train": {"batch_size": 4096}}
    )
    with TestClient(create_app(tight)) as client:
        r = client.post("/v1/jobs", json=spec)
    assert r.status_code == 422, r.text
    detail = {d["loc"]: d["msg"] for d in r.json()["detail"]}
    assert "8.0 MiB" in detail["teacher.train.batch_size"]
    assert "at most" in detail["teacher.train.batch_size"]


def test_a_project_budget_overrides_the_services(settings: Settings, new_spec: Any) -> None:
    """Two projects on a service whose budget is too small for the spec: the project given a
    budget of its own (`project_limits`) submits it, the other is refused."""
    roomy, plain = f"roomy-{uuid.uuid4().hex[:8]}", f"plain-{uuid.uuid4().hex[:8]}"
    app = create_app(
        settings.model_copy(
            update={
                "auth": "keys",
                "max_model_params": 1000,
                "project_limits": {roomy: {"max_model_params": 10**6}},
            }
        )
    )
    with app.state.sessions() as s:
        keys = {name: create_key(s, name)[1] for name in (roomy, plain)}
        s.commit()
    with TestClient(app) as client:
        answers = {
            name: client.post(
                "/v1/jobs", json=new_spec(), headers={"Authorization": f"Bearer {key}"}
            )
            for name, key in keys.items()
        }
    assert answers[roomy].status_code == 201, answers[roomy].text
    assert answers[plain].status_code == 422, answers[plain].text
    assert answers[plain].json()["detail"][0]["loc"] == "teacher.kwargs"
