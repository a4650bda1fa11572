"""docker-compose.yml has the services production needs (no Docker engine runs here, so the
file is checked for shape, and with `docker-compose config` where that tool is installed)."""

import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent


def compose() -> dict:
    return yaml.safe_load((ROOT / "docker-compose.yml").read_text())


def test_services_and_wiring() -> None:
    services = compose()["services"]
    assert {"postgres", "redis", "migrate", "api", "worker-gpu0", "reconciler", "flower"} <= set(
        services
    )
    assert services["migrate"]["command"] == ["alembic", "upgrade", "head"]
    assert services["api"]["depends_on"]["migrate"] == {
        "condition": "service_completed_successfully"
    }
    gpu = services["worker-gpu0"]["deploy"]["resources"]["reservations"]["devices"][0]
    assert gpu["capabilities"] == ["gpu"] and gpu["device_ids"] == ["0"]
    assert services["worker-gpu0"]["environment"]["CUDA_VISIBLE_DEVICES"] == "0"
    for name in ("api", "worker-gpu0", "migrate", "reconciler"):
        env = services[name]["environment"]
        assert env["DISTILLERY_DATABASE_URL"].startswith("postgresql+psycopg://")
        assert env["DISTILLERY_BROKER_URL"].startswith("redis://")
    for dockerfile in ("docker/api.Dockerfile", "docker/worker.Dockerfile"):
        text = (ROOT / dockerfile).read_text()
        assert 'pip install "torch==2.13.0"' in text and "COPY migrations" in text


@pytest.mark.skipif(shutil.which("docker-compose") is None, reason="docker-compose not installed")
def test_docker_compose_config_parses() -> None:
    proc = subprocess.run(
        ["docker-compose", "config", "-q"], cwd=ROOT, capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 0, proc.stderr
