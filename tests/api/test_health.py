"""Probes, the OpenAPI document, the 500 handler, and a cheap `import api.main`."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from fastapi.testclient import TestClient

from api.main import create_app
from store.settings import Settings


def test_healthz(client: TestClient) -> None:
    assert client.get("/healthz").json() == {"status": "ok"}


def test_readyz_with_real_servers(client: TestClient) -> None:
    r = client.get("/readyz")
    assert r.status_code == 200, r.text
    assert r.json() == {
        "status": "ready",
        "checks": {"database": "ok", "broker": "ok"},
        "detail": None,
    }


def test_readyz_names_a_broker_that_is_down(settings: Settings) -> None:
    down = settings.model_copy(update={"broker_url": "redis://127.0.0.1:1/0"})
    with TestClient(create_app(down)) as client:
        r = client.get("/readyz")
        assert client.get("/healthz").status_code == 200
    assert r.status_code == 503
    body = r.json()
    assert body["checks"]["database"] == "ok"
    assert body["checks"]["broker"].startswith("error:")
    assert body["detail"] == "broker unreachable"


def test_readyz_names_a_database_that_is_down(settings: Settings) -> None:
    down = settings.model_copy(
        update={"database_url": "postgresql+psycopg://postgres@127.0.0.1:1/nothing"}
    )
    with TestClient(create_app(down)) as client:
        r = client.get("/readyz")
    assert r.status_code == 503
    assert r.json()["checks"]["broker"] == "ok"
    assert r.json()["detail"] == "database unreachable"


def test_every_operation_is_documented(client: TestClient) -> None:
    doc = client.get("/openapi.json").json()
    for path, ops in doc["paths"].items():
        for method, op in ops.items():
            assert op.get("summary") and op.get("description"), f"{method} {path}"
            assert "200" in op["responses"] or "201" in op["responses"], f"{method} {path}"
    submit = doc["paths"]["/v1/jobs"]["post"]["requestBody"]["content"]["application/json"]
    assert submit["schema"] == {"$ref": "#/components/schemas/JobSpec"}
    schemas = doc["components"]["schemas"]
    assert {"JobSpec", "TeacherSpec", "JobDetail", "ValidationErrorOut"} <= set(schemas)
    assert "HTTPValidationError" not in schemas  # our 422 shape is the one documented


def test_unexpected_errors_are_json_without_a_traceback(settings: Settings) -> None:
    app = create_app(settings)

    @app.get("/boom")
    def boom() -> None:
        raise RuntimeError("secret internals")

    with TestClient(app, raise_server_exceptions=False) as client:
        r = client.get("/boom")
    assert r.status_code == 500
    assert r.json()["code"] == "internal_error"
    assert "secret" not in r.text and "Traceback" not in r.text


def test_unknown_route_is_json_404(client: TestClient) -> None:
    r = client.get("/v1/nothing")
    assert r.status_code == 404 and r.json()["code"] == "not_found"


def test_importing_the_module_touches_nothing(tmp_path: Path) -> None:
    """`uvicorn api.main:app` imports the module first; that alone must create no files."""
    code = "import api.main; import sys; sys.exit('torch' in sys.modules)"
    subprocess.run([sys.executable, "-c", code], cwd=tmp_path, check=True)
    assert list(tmp_path.iterdir()) == []
