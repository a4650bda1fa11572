"""A JSON body nested past any sensible depth is the caller's mistake: a 422 that names the
limit, never a 500 (Python's parser raises RecursionError near depth 1000)."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient

from api.json_body import MAX_DEPTH

JSON = {"content-type": "application/json"}


def nested_arrays(depth: int) -> bytes:
    return b"[" * depth + b"]" * depth


def nested_objects(depth: int) -> bytes:
    return b'{"a":' * depth + b"1" + b"}" * depth


@pytest.mark.parametrize("depth", [MAX_DEPTH + 1, 900, 1000, 100_000])
@pytest.mark.parametrize("shape", [nested_arrays, nested_objects])
def test_too_deep_a_body_is_a_422_naming_the_limit(
    client: TestClient, depth: int, shape: object
) -> None:
    assert callable(shape)
    r = client.post("/v1/jobs", content=shape(depth), headers=JSON)
    assert r.status_code == 422, r.text
    body = r.json()
    assert body["code"] == "nesting_too_deep"
    assert body["detail"][0]["loc"] == "(root)"
    assert "nested" in body["message"] and str(MAX_DEPTH) in body["message"]


def test_brackets_inside_strings_are_not_nesting(client: TestClient) -> None:
    """Only arrays and objects count: a name full of brackets is just a (bad) spec."""
    r = client.post("/v1/jobs", json={"name": "[" * 5000, "student": {"arch": "mlp"}})
    assert r.status_code == 422, r.text
    assert r.json()["code"] == "invalid_spec"


def test_nesting_up_to_the_limit_reaches_spec_validation(client: TestClient) -> None:
    """A body at the limit is parsed; it is then judged as a spec (a list is not one)."""
    r = client.post("/v1/jobs", content=nested_arrays(MAX_DEPTH), headers=JSON)
    assert r.status_code == 422, r.text
    assert r.json()["code"] == "invalid_spec"


def test_every_json_endpoint_refuses_deep_bodies(client: TestClient) -> None:
    """Found from the OpenAPI document, so an endpoint added later is covered too."""
    doc = client.get("/openapi.json").json()
    json_ops = [
        (method, path)
        for path, ops in doc["paths"].items()
        for method, op in ops.items()
        if "application/json" in op.get("requestBody", {}).get("content", {})
    ]
    assert ("post", "/v1/jobs") in json_ops
    for method, path in json_ops:
        url = path.replace("{job_id}", "nope")
        r = client.request(method.upper(), url, content=nested_arrays(5000), headers=JSON)
        assert r.status_code == 422 and r.json()["code"] == "nesting_too_deep", (method, path)
