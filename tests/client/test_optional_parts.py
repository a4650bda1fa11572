"""`distill` with parts of Distillery missing: without the engine (torch), `run`, `validate` and
`zoo` say to install `distillery[engine]` and exit 1; without the service's packages, `serve`,
`keys` and `projects` are left out of `--help` and say to install `distillery[service]`. The
missing parts are simulated in a fresh interpreter (a `None` entry in sys.modules makes an
import fail); tests/client_only runs the real thing in a venv with only `distillery[client]`."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SPEC = str(ROOT / "examples" / "digits-kd.yaml")


def distill_without(missing: list[str], *args: str) -> dict[str, object]:
    """Run `distill ARGS` in a fresh interpreter where the `missing` modules cannot be imported;
    returns exit code, stdout and stderr."""
    code = (
        "import json, sys\n"
        f"for name in {missing!r}: sys.modules[name] = None\n"
        "from typer.testing import CliRunner\n"
        "from client.cli import app\n"
        f"r = CliRunner().invoke(app, {list(args)!r})\n"
        "print(json.dumps({'code': r.exit_code, 'out': r.stdout, 'err': r.stderr}))\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout.splitlines()[-1])


@pytest.mark.parametrize(
    "args", [["run", SPEC, "--out", "never-written"], ["validate", SPEC], ["zoo"]]
)
def test_engine_commands_without_torch_say_what_to_install(args: list[str]) -> None:
    r = distill_without(["torch"], *args)
    assert r["code"] == 1
    assert "pip install 'distillery[engine]'" in str(r["err"])
    assert "torch" in str(r["err"]) and "Traceback" not in str(r["err"])
    assert not (ROOT / "never-written").exists()


def test_validate_without_torch_says_so_before_checking_the_spec(tmp_path: Path) -> None:
    """The spec's shape can be checked without torch, but a half-checked spec would mislead:
    the missing engine is reported first."""
    incomplete = tmp_path / "x.yaml"
    incomplete.write_text("name: x\n")
    r = distill_without(["torch"], "validate", str(incomplete))
    assert r["code"] == 1 and "pip install 'distillery[engine]'" in str(r["err"])


@pytest.mark.parametrize(
    "args", [["serve"], ["keys", "create", "--project", "x"], ["projects", "list"]]
)
def test_service_commands_without_the_service_say_what_to_install(args: list[str]) -> None:
    r = distill_without(["sqlalchemy"], *args)
    assert r["code"] == 1
    assert "pip install 'distillery[service]'" in str(r["err"])
    assert "sqlalchemy" in str(r["err"])


def test_help_lists_service_commands_only_where_the_service_is_installed() -> None:
    def commands(missing: list[str]) -> set[str]:
        text = str(distill_without(missing, "--help")["out"])
        return {w for w in ("serve", "keys", "projects", "submit", "run") if f"│ {w} " in text}

    assert commands([]) == {"serve", "keys", "projects", "submit", "run"}
    assert commands(["fastapi"]) == {"submit", "run"}
