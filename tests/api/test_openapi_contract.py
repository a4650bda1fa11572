"""The OpenAPI document says what the service does: every documented response shape is the one
sent, every documented method is allowed, and the body schema of POST /v1/jobs describes the
specs the service accepts (architecture and method names from the registries, "teacher or
teachers", each method's own keys), so a client generated from it, or a fuzzer, gets 201s."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import jsonschema_rs
import pytest
import yaml
from fastapi.testclient import TestClient

from kdcore.methods import registry as methods
from kdcore.models import registry as models
from kdcore.spec import file_references, set_path
from kdcore.validation import parse_spec
from store.settings import Settings

EXAMPLES = sorted((Path(__file__).parents[2] / "examples").glob("*.yaml"))


@pytest.fixture
def doc(client: TestClient) -> dict[str, Any]:
    return client.get("/openapi.json").json()


def validator(doc: dict[str, Any], schema: dict[str, Any]) -> Any:
    """A JSON Schema validator for `schema`, resolving the document's component refs."""
    return jsonschema_rs.Draft202012Validator({**schema, "components": doc["components"]})


def body_validator(doc: dict[str, Any]) -> Any:
    content = doc["paths"]["/v1/jobs"]["post"]["requestBody"]["content"]["application/json"]
    return validator(doc, content["schema"])


def errors_of(check: Any, instance: Any) -> list[str]:
    return [str(e) for e in check.iter_errors(instance)]


# --- responses and methods ----------------------------------------------------------------------


def test_artifact_404s_match_their_documented_schema(
    client: TestClient, doc: dict[str, Any], new_spec: Any
) -> None:
    """No such job and no such format are both 404s; each body fits the documented schema."""
    op = doc["paths"]["/v1/jobs/{job_id}/artifacts/{format}"]["get"]
    check = validator(doc, op["responses"]["404"]["content"]["application/json"]["schema"])
    job_id = client.post("/v1/jobs", json=new_spec()).json()["id"]
    no_format = client.get(f"/v1/jobs/{job_id}/artifacts/tflite")
    no_job = client.get("/v1/jobs/nope/artifacts/onnx")
    for r in (no_format, no_job):
        assert r.status_code == 404
        assert errors_of(check, r.json()) == [], r.json()
    assert no_format.json()["available"] == []


@pytest.mark.parametrize(
    ("path", "methods_there"),
    [
        ("/v1/uploads", {"GET", "POST"}),
        ("/v1/jobs", {"GET", "POST"}),
        ("/v1/jobs/x/artifacts/onnx", {"GET", "HEAD"}),
        ("/v1/jobs/x/cancel", {"POST"}),
    ],
)
def test_allow_lists_every_method_of_a_path(
    client: TestClient, path: str, methods_there: set[str]
) -> None:
    options = client.options(path)
    assert options.status_code == 204, options.text
    allowed = {m.strip() for m in options.headers["allow"].split(",")}
    assert allowed == methods_there | {"OPTIONS"}
    for method in methods_there:  # each one listed is answered (whatever the outcome)
        assert client.request(method, path).status_code != 405, method
    wrong = client.request("PATCH", path)
    assert wrong.status_code == 405 and wrong.json()["code"] == "method_not_allowed"
    assert {m.strip() for m in wrong.headers["allow"].split(",")} == allowed


def test_the_cursor_is_documented(client: TestClient, doc: dict[str, Any]) -> None:
    params = {p["name"]: p for p in doc["paths"]["/v1/jobs"]["get"]["parameters"]}
    cursor = params["cursor"]
    assert "opaque" in cursor["description"] and "next_cursor" in cursor["description"]
    pattern = cursor["schema"]["pattern"]
    page = doc["components"]["schemas"]["JobPage"]["properties"]["next_cursor"]
    assert "opaque" in page["description"]
    assert client.get("/v1/jobs", params={"cursor": "not a cursor!"}).status_code == 422
    assert pattern == "^[A-Za-z0-9_-]+$"


# --- the spec schema ----------------------------------------------------------------------------


def _named(doc: dict[str, Any], key: str) -> set[str]:
    """Every enum or const value of properties called `key` anywhere in the components."""
    found: set[str] = set()

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            prop = node.get("properties", {}).get(key)
            if isinstance(prop, dict):
                found.update(prop.get("enum", []))
                if "const" in prop:
                    found.add(prop["const"])
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    walk(doc["components"]["schemas"])
    return found


def test_architectures_and_methods_are_enums_from_the_registries(doc: dict[str, Any]) -> None:
    schemas = doc["components"]["schemas"]
    assert schemas["Architecture"]["enum"] == models.names()
    assert _named(doc, "name") >= set(methods.names())
    student_arch = schemas["StudentSpec"]["properties"]["arch"]
    assert student_arch == {"$ref": "#/components/schemas/Architecture"}


def test_the_example_is_valid_and_accepted(client: TestClient, doc: dict[str, Any]) -> None:
    content = doc["paths"]["/v1/jobs"]["post"]["requestBody"]["content"]["application/json"]
    example = content["example"]
    assert errors_of(body_validator(doc), example) == []
    parse_spec(example)
    r = client.post("/v1/jobs", json=example)
    assert r.status_code == 201, r.text


@pytest.mark.parametrize("path", EXAMPLES, ids=[p.stem for p in EXAMPLES])
def test_every_example_spec_fits_the_schema(doc: dict[str, Any], path: Path) -> None:
    """The schema is not stricter than the service: each shipped example (its files named
    as uploads) is schema-valid."""
    data = yaml.safe_load(path.read_text())
    for loc, _, _ in file_references(parse_spec(data)):
        set_path(data, loc, "upload:0123456789abcdef")
    assert errors_of(body_validator(doc), data) == []


def _spec(**sections: Any) -> dict[str, Any]:
    spec: dict[str, Any] = {
        "name": "s",
        "student": {"arch": "mlp"},
        "data": {"source": "digits"},
    }
    spec.update(sections)
    return {k: v for k, v in spec.items() if v is not None}


TRAINED = {"arch": "mlp", "train": {"epochs": 1}}


@pytest.mark.parametrize(
    ("spec", "valid"),
    [
        (_spec(teacher=TRAINED), True),
        (_spec(teachers=[TRAINED, {**TRAINED, "weight": 2}]), True),
        (_spec(teacher=TRAINED, teachers=[TRAINED]), False),
        (_spec(), False),
        (_spec(method={"name": "gpd", "scenario": "scratch"}), True),
        (_spec(teacher=TRAINED, method={"name": "gpd", "scenario": "scratch"}), False),
        (_spec(teacher=TRAINED, method={"name": "gpd"}), True),
        (_spec(teacher={"onnx": "upload:abc"}), True),
        (_spec(teacher={"onnx": "upload:abc", "arch": "mlp"}), False),
        (_spec(teacher={"arch": "mlp"}), False),
        (_spec(teacher={**TRAINED, "arch": "no-such-net"}), False),
        (_spec(teacher=TRAINED, method={"name": "kd", "beta": 1}), False),
        (_spec(teacher=TRAINED, method={"name": "no-such-method"}), False),
        (_spec(teacher=TRAINED, method={"temperature": 2.0}), True),
        (_spec(teacher=TRAINED, data={"source": "/etc/passwd"}), False),
        (_spec(teacher=TRAINED, data={"source": "upload:abc"}), True),
    ],
)
def test_the_schema_tells_valid_specs_from_invalid_ones(
    doc: dict[str, Any], spec: dict[str, Any], valid: bool
) -> None:
    """Who teaches, each teacher's source, method keys and names: as parse_spec judges them."""
    assert (errors_of(body_validator(doc), spec) == []) is valid
    if valid:
        parse_spec(spec)


def test_the_runtime_limit_is_the_services(doc: dict[str, Any], settings: Settings) -> None:
    runtime = doc["components"]["schemas"]["TrainSpec"]["properties"]["max_runtime_s"]
    assert runtime["maximum"] == settings.max_job_runtime_s


@pytest.mark.parametrize("after", [2**63, -1, 10**30])
def test_an_event_id_out_of_range_is_a_422_naming_after(
    client: TestClient, new_spec: Any, after: int
) -> None:
    """Was a 422 blaming "a NUL character or a value too long" from the database."""
    job_id = client.post("/v1/jobs", json=new_spec()).json()["id"]
    r = client.get(f"/v1/jobs/{job_id}/events", params={"after": after})
    assert r.status_code == 422
    assert [d["loc"] for d in r.json()["detail"]] == ["query.after"]
    assert client.get(f"/v1/jobs/{job_id}/events", params={"after": 2**63 - 1}).json() == {
        "items": []
    }
