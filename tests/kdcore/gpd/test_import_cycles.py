"""No import cycles among the GPD modules, function-level imports included.

Walks the AST of every module under kdcore/schemes/gpd/ (no module is imported, so an import
inside a function counts as much as one at the top) and looks for a cycle in the graph of the
imports between them. A submodule import also runs its package's `__init__` first; that is
package initialisation, not a dependency of the importing module, so it is not an edge.
"""

from __future__ import annotations

import ast
from pathlib import Path

import kdcore

PACKAGE = "kdcore.schemes.gpd"
ROOT = Path(kdcore.__file__).parent / "schemes" / "gpd"


def _module_name(path: Path) -> str:
    parts = [*PACKAGE.split("."), *path.relative_to(ROOT).with_suffix("").parts]
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imported(
    node: ast.Import | ast.ImportFrom, module: str, is_package: bool, known: set[str]
) -> list[str]:
    """The modules `node` imports: `from p import x` imports p.x if that is a module, else p."""
    if isinstance(node, ast.Import):
        return [alias.name for alias in node.names]
    base = node.module or ""
    if node.level:
        anchor = module.split(".")
        anchor = anchor[: len(anchor) - node.level + (1 if is_package else 0)]
        base = ".".join([*anchor, *([base] if base else [])])
    return [f"{base}.{a.name}" if f"{base}.{a.name}" in known else base for a in node.names]


def import_graph() -> dict[str, set[str]]:
    """GPD module → the GPD modules it imports anywhere in its source."""
    paths = {_module_name(p): p for p in ROOT.rglob("*.py")}
    graph: dict[str, set[str]] = {}
    for module, path in paths.items():
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        is_package = path.name == "__init__.py"
        targets = {
            target
            for node in ast.walk(tree)
            if isinstance(node, (ast.Import, ast.ImportFrom))
            for target in _imported(node, module, is_package, set(paths))
        }
        graph[module] = {t for t in targets if t in paths and t != module}
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle of `graph` as a path that returns to its start, or None."""
    done: set[str] = set()
    path: list[str] = []

    def visit(module: str) -> list[str] | None:
        if module in path:
            return [*path[path.index(module) :], module]
        if module in done:
            return None
        path.append(module)
        for target in sorted(graph.get(module, ())):
            cycle = visit(target)
            if cycle is not None:
                return cycle
        path.pop()
        done.add(module)
        return None

    for module in sorted(graph):
        cycle = visit(module)
        if cycle is not None:
            return cycle
    return None


def test_the_walk_sees_the_gpd_modules_and_their_imports() -> None:
    graph = import_graph()
    assert f"{PACKAGE}.rule_table" in graph[f"{PACKAGE}.cbr"]
    assert f"{PACKAGE}.cbr_blocks" in graph[f"{PACKAGE}.cbr_rules"]
    assert f"{PACKAGE}.plan.walk" in graph[f"{PACKAGE}.expand"]


def test_the_cycle_finder_finds_function_level_cycles() -> None:
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": set()}) is None
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    source = "def later() -> None:\n    from kdcore.schemes.gpd import cbr\n"
    node = next(n for n in ast.walk(ast.parse(source)) if isinstance(n, ast.ImportFrom))
    known = {f"{PACKAGE}.cbr", f"{PACKAGE}.cbr_rules"}
    assert _imported(node, f"{PACKAGE}.cbr_rules", False, known) == [f"{PACKAGE}.cbr"]


def test_no_import_cycle_among_gpd_modules() -> None:
    cycle = find_cycle(import_graph())
    assert cycle is None, "import cycle: " + " → ".join(cycle or [])
