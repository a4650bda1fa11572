"""Package boundaries that installs rely on (../shared/DESIGN.md, "may import"): the client
installs without the service (`distillery[client]`), so no client module may import store, api,
worker or service, not even inside a function; the API enqueues through store.queue and never
imports the worker package. Checked on the source, so a lazy import cannot hide."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def imported_packages(path: Path) -> set[str]:
    """Top-level packages `path` imports anywhere (module level, functions, TYPE_CHECKING)."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.add(node.module.split(".")[0])
    return found


def offenders(package: str, forbidden: set[str]) -> dict[str, set[str]]:
    files = sorted((ROOT / package).rglob("*.py"))
    assert files, f"no modules under {package}/"
    out = {}
    for path in files:
        bad = imported_packages(path) & forbidden
        if bad:
            out[str(path.relative_to(ROOT))] = bad
    return out


@pytest.mark.parametrize(
    ("package", "forbidden"),
    [
        ("client", {"store", "api", "worker", "service"}),
        ("api", {"worker", "service"}),
    ],
)
def test_package_does_not_import(package: str, forbidden: set[str]) -> None:
    assert offenders(package, forbidden) == {}


def test_the_walk_sees_lazy_imports(tmp_path: Path) -> None:
    module = tmp_path / "m.py"
    module.write_text("def f():\n    from store.db import make_engine\n    import worker.app\n")
    assert imported_packages(module) == {"store", "worker"}
