"""Method registry: one file per method, one `@register("name")` line each."""

from __future__ import annotations

from kdcore.methods.base import Method
from kdcore.registry import Registry

_methods: Registry[type[Method]] = Registry("method")
register = _methods.register


def _load() -> None:
    """Import every module of this package, so each method file's @register line runs."""
    import importlib
    import pkgutil

    import kdcore.methods as package

    for info in pkgutil.iter_modules(package.__path__):
        if info.name not in ("base", "registry"):
            importlib.import_module(f"kdcore.methods.{info.name}")


def names() -> list[str]:
    _load()
    return _methods.names()


def get(name: str) -> type[Method]:
    _load()
    return _methods.get(name)


def build(name: str, params: dict | None = None) -> Method:
    cls = get(name)
    return cls(cls.params.model_validate(params or {}))
