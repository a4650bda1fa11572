"""Finding the schemes: one file per scheme, one `@register` line each (as for methods).

`active(spec)` is what a job runs: every registered scheme that applies to the spec, in `order`.
"""

from __future__ import annotations

import importlib
import pkgutil

from kdcore.schemes.base import SCHEMES, Scheme, Stage, StudentScheme
from kdcore.spec import JobSpec

#: Modules of this package that hold no scheme (as do those whose name starts with "_").
_NOT_SCHEMES = {"base", "registry"}


def _load() -> None:
    """Import every module of the package, so each scheme file's @register line runs."""
    import kdcore.schemes as package

    for info in pkgutil.iter_modules(package.__path__):
        if info.name in _NOT_SCHEMES or info.name.startswith("_"):
            continue
        # a scheme too big for one file is a package whose `scheme` module registers it
        module = f"kdcore.schemes.{info.name}" + (".scheme" if info.ispkg else "")
        importlib.import_module(module)


def names() -> list[str]:
    _load()
    return SCHEMES.names()


def get(name: str) -> type[Scheme]:
    _load()
    return SCHEMES.get(name)


def active(spec: JobSpec) -> list[Scheme]:
    """The schemes `spec` uses, in running order; exactly one of them trains the student."""
    _load()
    schemes = [cls() for cls in (SCHEMES.get(n) for n in SCHEMES.names())]
    chosen = sorted((s for s in schemes if s.applies(spec)), key=lambda s: (s.order, s.name))
    students = [s.name for s in chosen if isinstance(s, StudentScheme)]
    if len(students) != 1:
        raise AssertionError(f"exactly one student scheme must apply, got {students}")
    return chosen


def plan(spec: JobSpec) -> list[Stage]:
    """Every stage of the job, in running order (the worker weighs progress with it)."""
    return [stage for scheme in active(spec) for stage in scheme.plan(spec)]
