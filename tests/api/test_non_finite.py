"""NaN and Infinity are not JSON, but Python's parser accepts them (and `1e999` becomes inf):
refused at the edge with a 422 naming the field, never passed on to the database (whose
refusal read "contains a NUL character or is too long")."""

from __future__ import annotations

import json
from typing import Any

import pytest
from fastapi.testclient import TestClient

JSON = {"content-type": "application/json"}


def post_raw(client: TestClient, spec: dict[str, Any], literals: dict[str, str]) -> Any:
    """POST `spec` with each placeholder string in `literals` replaced by a raw JSON token."""
    body = json.dumps(spec)
    for placeholder, literal in literals.items():
        body = body.replace(json.dumps(placeholder), literal)
    return client.post("/v1/jobs", content=body.encode(), headers=JSON)


@pytest.mark.parametrize("literal", ["NaN", "Infinity", "-Infinity", "1e999"])
@pytest.mark.parametrize(
    ("loc", "section"),
    [
        ("train.optimizer.lr", {"train": {"epochs": 1, "optimizer": {"lr": "@"}}}),
        ("train.optimizer.weight_decay", {"train": {"optimizer": {"weight_decay": "@"}}}),
        ("gates.max_gap", {"gates": {"max_gap": "@"}}),
        ("method.temperature", {"method": {"name": "kd", "temperature": "@"}}),
        ("student.kwargs.hidden.0", {"student": {"arch": "mlp", "kwargs": {"hidden": ["@"]}}}),
    ],
)
def test_non_finite_numbers_are_a_422_naming_the_field(
    client: TestClient, new_spec: Any, loc: str, section: dict[str, Any], literal: str
) -> None:
    r = post_raw(client, new_spec(**section), {"@": literal})
    assert r.status_code == 422, r.text
    errors = {d["loc"]: d["msg"] for d in r.json()["detail"]}
    assert loc in errors, errors
    assert "finite" in errors[loc]
    assert "NUL" not in r.text


def test_every_non_finite_number_is_named_at_once(client: TestClient, new_spec: Any) -> None:
    spec = new_spec(train={"optimizer": {"lr": "@lr", "weight_decay": "@wd"}}, gates={"max_gap": 1})
    r = post_raw(client, spec, {"@lr": "NaN", "@wd": "Infinity"})
    assert r.status_code == 422, r.text
    assert {d["loc"] for d in r.json()["detail"]} == {
        "train.optimizer.lr",
        "train.optimizer.weight_decay",
    }


def test_non_finite_numbers_as_strings_are_refused_too(client: TestClient, new_spec: Any) -> None:
    """pydantic reads "NaN" and "inf" strings as floats in lax mode."""
    r = client.post("/v1/jobs", json=new_spec(gates={"max_gap": "NaN"}))
    assert r.status_code == 422, r.text
    errors = {d["loc"]: d["msg"] for d in r.json()["detail"]}
    assert "finite" in errors["gates.max_gap"]


def test_finite_numbers_still_pass(client: TestClient, new_spec: Any) -> None:
    spec = new_spec(train={"epochs": 1, "optimizer": {"lr": 1e-300, "weight_decay": 1e300}})
    r = client.post("/v1/jobs", json={**spec, "gates": {"max_gap": -1e308}})
    assert r.status_code == 201, r.text
