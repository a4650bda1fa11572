"""Scheme conflicts are answered at submit: 422 naming the field, and no job is stored (a CI
pipeline learns at once what it would otherwise learn minutes later from the worker)."""

from __future__ import annotations

from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from store.models import Job

GPD = {"name": "gpd", "scenario": "scratch", "ratio": 2}


@pytest.mark.parametrize(
    ("sections", "field"),
    [
        (
            {"teacher": None, "method": {"name": "gpd", "scenario": "finetune"}},
            "student.checkpoint",
        ),
        ({"method": {"name": "dml"}, "assistants": [{"arch": "mlp"}]}, "assistants"),
        ({"teacher": None, "method": GPD, "generations": 2}, "generations"),
    ],
)
def test_a_scheme_conflict_is_422_naming_the_field(
    client: TestClient, db: Session, new_spec: Any, sections: dict[str, Any], field: str
) -> None:
    before = db.scalar(select(func.count()).select_from(Job))
    spec = {k: v for k, v in new_spec(**sections).items() if v is not None}
    r = client.post("/v1/jobs", json=spec)
    assert r.status_code == 422, r.text
    assert [d["loc"] for d in r.json()["detail"]] == [field]
    assert r.json()["detail"][0]["msg"]
    assert db.scalar(select(func.count()).select_from(Job)) == before
