"""The model zoo registry: `@register("name")` on a factory `(input_shape, num_classes, **kw)`."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from torch import nn

from kdcore.registry import Registry

ModelFactory = Callable[..., nn.Module]
_zoo: Registry[ModelFactory] = Registry("architecture")
register = _zoo.register


def _load_zoo() -> None:
    """Import every module of the zoo package, so each architecture's @register line runs
    (found by listing the package, like the methods: the registry imports no architecture)."""
    import importlib
    import pkgutil

    import kdcore.models.zoo as package

    for info in pkgutil.iter_modules(package.__path__):
        if not info.name.startswith("_"):
            importlib.import_module(f"kdcore.models.zoo.{info.name}")


def names() -> list[str]:
    _load_zoo()
    return _zoo.names()


def build_model(
    arch: str, input_shape: Sequence[int], num_classes: int, **kwargs: Any
) -> nn.Module:
    """Build a zoo architecture for data of `input_shape` (no batch dim) and `num_classes`."""
    _load_zoo()
    factory = _zoo.get(arch)
    try:
        return factory(tuple(input_shape), num_classes, **kwargs)
    except TypeError as exc:
        raise ValueError(f"{arch}: bad kwargs {kwargs}: {exc}") from None
