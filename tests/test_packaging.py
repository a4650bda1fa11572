"""pyproject.toml's extras split what each part needs: the base is the client (no torch, no
service packages), `engine` the ML stack, `service` the engine plus database, API and queue,
`dev` the tools; scripts/install.sh installs them all; the CI recipes install the client only.
tests/client_only installs `distillery[client]` for real in a fresh venv (`.ci/run`)."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]


def names(requirements: list[str]) -> set[str]:
    """Distribution names of requirement strings (lower case, without extras or versions)."""
    out = set()
    for requirement in requirements:
        match = re.match(r"[A-Za-z0-9_.-]+", requirement)
        assert match, requirement
        out.add(match.group(0).lower())
    return out


def test_the_base_is_the_client() -> None:
    client = names(PROJECT["dependencies"]) | names(PROJECT["optional-dependencies"]["client"])
    assert client == {"httpx", "typer", "rich", "pydantic", "pyyaml"}


def test_engine_and_service_extras() -> None:
    extras = {k: names(v) for k, v in PROJECT["optional-dependencies"].items()}
    assert {"torch", "numpy", "scikit-learn", "onnx", "onnxruntime", "safetensors"} <= extras[
        "engine"
    ]
    service = {"sqlalchemy", "alembic", "psycopg", "fastapi", "uvicorn", "celery", "redis"}
    assert "distillery" in extras["service"] and service <= extras["service"]
    assert {"pytest", "psutil", "ruff", "mypy"} <= extras["dev"]
    assert PROJECT["entry-points"]["distillery.commands"] == {"service": "service.cli:register"}


def test_install_script_installs_everything() -> None:
    text = (ROOT / "scripts" / "install.sh").read_text()
    assert text.index('"torch==2.13.0"') < text.index('-e ".[client,engine,service,dev]"')


@pytest.mark.parametrize("name", ["github-actions.yml", "gitlab-ci.yml"])
def test_ci_recipes_install_the_client_only(name: str) -> None:
    text = (ROOT / "examples" / "ci" / name).read_text()
    assert "distillery[client] @ git+" in text and "pip install torch" not in text


def test_ci_runs_the_client_only_suite_from_a_client_only_venv() -> None:
    text = (ROOT / ".ci" / "run").read_text()
    readme_command = text.index(".venv/bin/pytest -q\n")
    client_only = text.index("tests/client_only")
    assert readme_command < client_only and '".[client]" pytest' in text
    assert "DISTILLERY_SERVICE_VENV=" in text
    pytest_options = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["pytest"]
    assert "--ignore=tests/client_only" in pytest_options["ini_options"]["addopts"]
