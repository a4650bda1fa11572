"""The local engine commands (`run`, `validate`, `zoo`) where the engine is not installed.

kdcore is imported inside those commands, so `distill` starts without torch
(`pip install 'distillery[client]'`); there, a missing engine package is a clear message and
exit code 1 rather than a traceback.
"""

from __future__ import annotations

import functools
import importlib.util
from collections.abc import Callable
from typing import ParamSpec, TypeVar

import typer
from rich.console import Console

from client.outcome import EXIT_ERROR

ENGINE_EXTRA = "distillery[engine]"
#: our own packages: a missing module among them is a bug, not a missing install
OWN_PACKAGES = frozenset({"client", "kdcore"})
#: looked for before the command runs: parts of kdcore (spec shape checks) work without it, so
#: waiting for an import error could show a half-checked spec instead of the missing engine
ENGINE_MODULE = "torch"

P = ParamSpec("P")
R = TypeVar("R")
err = Console(stderr=True, highlight=False, soft_wrap=True)


def needs_engine(command: Callable[P, R]) -> Callable[P, R]:
    """Wrap a command that imports kdcore: a missing third-party module ends it with exit 1 and
    how to install the engine."""

    def missing(name: str) -> typer.Exit:
        err.print(
            f"error: `distill {command.__name__}` runs the engine locally, which needs "
            f"packages not installed here (no module named {name!r}); install it with: "
            f"pip install '{ENGINE_EXTRA}'",
            markup=False,
        )
        return typer.Exit(EXIT_ERROR)

    @functools.wraps(command)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        if importlib.util.find_spec(ENGINE_MODULE) is None:
            raise missing(ENGINE_MODULE)
        try:
            return command(*args, **kwargs)
        except ModuleNotFoundError as exc:
            top = (exc.name or "").split(".")[0]
            if not top or top in OWN_PACKAGES:
                raise
            raise missing(exc.name or top) from None

    return wrapper
