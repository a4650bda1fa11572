"""The size of an architecture without allocating it: a build and a forward on the meta device.

Tensors on `torch.device("meta")` have shapes but no storage, so a model of ten billion
parameters is built in a millisecond and no memory. Three things keep the estimate fast and
bounded, because it runs at submit: weight initialisation is skipped (on meta it does nothing
but still costs about a millisecond a layer); a build that makes more than `MAX_BUILD_CALLS`
torch calls is stopped (a ViT a million blocks deep would take minutes even on meta); layers
that keep their input's shape (norms, activations, dropout) stand in as `empty_like` during the
forward (the same count, at a fraction of their meta kernels' cost). The forward counts every
tensor an operator makes, views aside, including those made inside a module's own forward
(ViT's attention matrix), not only what layers return. Results are cached per architecture,
kwargs, input shape and class count.

Tensors made from data during the build (`torch.tensor(...)`) stay on the CPU, so a factory may
compute with them. A build that still fails on meta for a reason of the meta device's own (a
value read out of a parameter) is `Unestimable`, never a refusal: the real build in the worker
says what is wrong, if anything.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import torch
from torch import nn
from torch.overrides import TorchFunctionMode
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

from kdcore.models.registry import build_model

#: torch calls a build may make: ResNet-110 makes about 4 000
MAX_BUILD_CALLS = 100_000
#: kwargs longer than this (as JSON) are estimated but not cached
MAX_CACHED_KWARGS = 4096
#: constructors of tensors from data: left on the CPU (a factory may compute with them)
_FROM_DATA: frozenset[Callable[..., Any]] = frozenset(
    {torch.tensor, torch.as_tensor, torch.asarray, torch.scalar_tensor}
)

_INIT: frozenset[Callable[..., Any]] = frozenset(
    {
        *(getattr(nn.init, n) for n in dir(nn.init) if n.endswith("_") and not n.startswith("_")),
        torch.Tensor.normal_,
        torch.Tensor.uniform_,
        torch.Tensor.fill_,
        torch.Tensor.zero_,
        torch.Tensor.copy_,
    }
)
_SAME_SHAPE: tuple[type[nn.Module], ...] = (
    nn.modules.batchnorm._NormBase,
    nn.LayerNorm,
    nn.GroupNorm,
    nn.modules.dropout._DropoutNd,
    nn.ReLU,
    nn.ReLU6,
    nn.LeakyReLU,
    nn.GELU,
    nn.SiLU,
    nn.ELU,
    nn.Hardswish,
    nn.Sigmoid,
    nn.Tanh,
)


@dataclass(frozen=True)
class ModelSize:
    """Parameters, and the elements one input row's forward makes: all of them (what training
    keeps for the backward pass) and the largest single tensor (what inference needs at once).
    Both are 0 when the forward cannot run on the meta device (the worker finds out why)."""

    params: int
    activations: int
    peak: int


class TooComplex(ValueError):
    """The build was stopped: too many layers to even estimate."""


class Unestimable(Exception):
    """The architecture cannot be built on the meta device (not a fault of its kwargs)."""


def model_size(
    arch: str, kwargs: Mapping[str, Any], input_shape: Sequence[int], num_classes: int
) -> ModelSize:
    """The size of zoo architecture `arch` for rows of `input_shape` and `num_classes`; a
    `ValueError` saying why when it cannot be built (bad kwargs, too many layers), and
    `Unestimable` when only the meta device is the problem."""
    key = json.dumps(kwargs, sort_keys=True, default=str)
    shape = tuple(int(d) for d in input_shape)
    if len(key) > MAX_CACHED_KWARGS:
        return _measure(arch, key, shape, int(num_classes))
    return _cached(arch, key, shape, int(num_classes))


@lru_cache(maxsize=512)
def _cached(arch: str, key: str, shape: tuple[int, ...], num_classes: int) -> ModelSize:
    return _measure(arch, key, shape, num_classes)


def _measure(arch: str, key: str, shape: tuple[int, ...], num_classes: int) -> ModelSize:
    model = _build(arch, json.loads(key), shape, num_classes)
    params = sum(p.numel() for p in model.parameters())
    activations, peak = _forward(model, shape)
    return ModelSize(params, activations, peak)


class _MetaBuild(TorchFunctionMode):
    """Skips weight initialisation and stops a build past `MAX_BUILD_CALLS` torch calls."""

    def __init__(self, arch: str) -> None:
        super().__init__()
        self.arch = arch
        self.calls = 0

    def __torch_function__(
        self,
        func: Callable[..., Any],
        types: Any,
        args: Sequence[Any] = (),
        kwargs: Mapping[str, Any] | None = None,
    ) -> Any:
        kwargs = kwargs or {}
        self.calls += 1
        if self.calls > MAX_BUILD_CALLS:
            raise TooComplex(
                f"{self.arch} with these kwargs has too many layers to check (its build makes "
                f"more than {MAX_BUILD_CALLS:,} tensor operations); use fewer layers"
            )
        if func in _INIT:
            target = next(a for a in (*args, *kwargs.values()) if isinstance(a, torch.Tensor))
            if target.is_meta:
                return target
        if func in _FROM_DATA and kwargs.get("device") is None:
            kwargs = {**kwargs, "device": "cpu"}
        return func(*args, **kwargs)


def _build(arch: str, kwargs: dict[str, Any], shape: tuple[int, ...], classes: int) -> nn.Module:
    try:
        with torch.device("meta"), _MetaBuild(arch):
            return build_model(arch, shape, classes, **kwargs)
    except TooComplex:
        raise
    except (ValueError, TypeError, OverflowError) as exc:  # what the factories raise for kwargs
        raise ValueError(f"cannot build {arch!r} for input {shape}: {exc}") from None
    except Exception as exc:
        raise Unestimable(f"{arch}: {type(exc).__name__}: {exc}") from None


class _Count(TorchDispatchMode):
    """Elements of every tensor an operator makes (views and in-place results aside)."""

    def __init__(self) -> None:
        super().__init__()
        self.total = 0
        self.peak = 0

    def __torch_dispatch__(
        self,
        func: Any,
        types: Any,
        args: Sequence[Any] = (),
        kwargs: Mapping[str, Any] | None = None,
    ) -> Any:
        out = func(*args, **(kwargs or {}))
        if all(r.alias_info is None for r in func._schema.returns):
            for t in tree_leaves(out):
                if isinstance(t, torch.Tensor):
                    self.total += t.numel()
                    self.peak = max(self.peak, t.numel())
        return out


def _forward(model: nn.Module, shape: tuple[int, ...]) -> tuple[int, int]:
    """(all elements, largest tensor) of one row's forward; (0, 0) if it cannot run on meta."""
    for module in model.modules():
        if isinstance(module, _SAME_SHAPE):
            module.forward = torch.empty_like
    count = _Count()
    try:
        with torch.no_grad(), count:
            model(torch.empty((1, *shape), device="meta"))
    except Exception:  # an operator without a meta kernel, or a model that fails on this shape
        return 0, 0
    return count.total, count.peak
