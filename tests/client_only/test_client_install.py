"""What `pip install 'distillery[client]'` gives: `import client.cli, client.sdk` pulls no engine
or service package, and (in the client-only venv that `.ci/run` sets up, DISTILLERY_CLIENT_ONLY
set) the engine and service commands say which extra to install instead of failing."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

HEAVY = ("torch", "numpy", "sqlalchemy", "fastapi", "celery", "store", "api", "worker")
client_only = pytest.mark.skipif(
    not os.environ.get("DISTILLERY_CLIENT_ONLY"),
    reason="needs the client-only venv (.ci/run sets DISTILLERY_CLIENT_ONLY=1)",
)


def test_importing_the_client_pulls_no_engine_or_service(tmp_path: Path) -> None:
    code = (
        "import json, sys, client.cli, client.sdk\n"
        f"print(json.dumps(sorted(m for m in {HEAVY!r} if m in sys.modules)))\n"
    )
    # in an empty folder: the installed client, not a source tree that happens to be the cwd
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, check=True
    )
    assert json.loads(out.stdout) == []


@client_only
def test_the_venv_holds_the_client_only() -> None:
    for name in ("torch", "numpy", "sqlalchemy", "fastapi", "celery", "uvicorn"):
        assert importlib.util.find_spec(name) is None, name


@client_only
@pytest.mark.parametrize(
    ("args", "extra"),
    [(["zoo"], "engine"), (["validate", "x.yaml"], "engine"), (["serve"], "service"),
     (["keys", "create", "--project", "p"], "service"), (["projects", "list"], "service")],
)  # fmt: skip
def test_missing_parts_say_what_to_install(
    args: list[str], extra: str, client_distill: Path, tmp_path: Path
) -> None:
    (tmp_path / "x.yaml").write_text("name: x\n")
    done = subprocess.run(
        [str(client_distill), *args], cwd=tmp_path, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 1, done.stderr
    assert f"pip install 'distillery[{extra}]'" in done.stderr
    assert "Traceback" not in done.stderr


@client_only
def test_help_lists_the_client_commands(client_distill: Path) -> None:
    shown = subprocess.run(
        [str(client_distill), "--help"], capture_output=True, text=True, timeout=60, check=True
    ).stdout
    for name in ("submit", "jobs", "status", "logs", "download", "cancel", "retry"):
        assert f" {name} " in shown, name
    assert " serve " not in shown and " keys " not in shown
