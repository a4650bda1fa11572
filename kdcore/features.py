"""Capture intermediate outputs of named modules with forward hooks, never by rewriting a model.

Feature- and relation-based methods name the layers they need (`teacher_layers`,
`student_layers`); a wrong name is a user error whose message lists every module with its
output shape, so the user can pick one.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils.hooks import RemovableHandle

from kdcore.errors import InputError
from kdcore.models.loaders import OnnxModel
from kdcore.models.outputs import hook_target


def _first_tensor(output: Any) -> Tensor | None:
    """The tensor a module produced (the first one, for tuple/list/dict outputs)."""
    if isinstance(output, Tensor):
        return output
    if isinstance(output, (tuple, list)) and output:
        return _first_tensor(output[0])
    if isinstance(output, dict) and output:
        return _first_tensor(next(iter(output.values())))
    return None


@torch.no_grad()
def module_shapes(model: nn.Module, example: Tensor) -> list[tuple[str, tuple[int, ...]]]:
    """Every named submodule with the shape of its output on `example` (one dry forward)."""
    runner, model = model, hook_target(model)
    shapes: dict[str, tuple[int, ...]] = {}
    handles = []
    for name, module in model.named_modules():
        if not name:
            continue

        def hook(_m: nn.Module, _i: Any, out: Any, name: str = name) -> None:
            t = _first_tensor(out)
            if t is not None:
                shapes[name] = tuple(t.shape)

        handles.append(module.register_forward_hook(hook))
    was_training = model.training
    model.eval()
    try:
        runner(example)
    finally:
        model.train(was_training)
        for h in handles:
            h.remove()
    return [(n, shapes[n]) for n, _ in model.named_modules() if n in shapes]


def listing(model: nn.Module, example: Tensor, limit: int = 60) -> str:
    rows = [f"{name} {tuple(shape)}" for name, shape in module_shapes(model, example)]
    more = f", ... ({len(rows) - limit} more)" if len(rows) > limit else ""
    return ", ".join(rows[:limit]) + more


class FeatureHooks:
    """Forward hooks on `names` of `model`; `outputs` holds the latest output of each."""

    def __init__(self, model: nn.Module, names: Sequence[str], field: str, example: Tensor):
        self.outputs: dict[str, Tensor] = {}
        self._handles: list[RemovableHandle] = []
        if not names:
            return
        model = hook_target(model)
        if isinstance(model, (torch.jit.ScriptModule, OnnxModel)):
            raise InputError(
                field,
                "feature methods need a PyTorch model (an architecture with a "
                "checkpoint, or trained in the job), not TorchScript or ONNX",
            )
        modules = dict(model.named_modules())
        missing = [n for n in names if n not in modules or not n]
        if missing:
            raise InputError(
                field,
                f"no module named {', '.join(repr(m) for m in missing)}; modules and their "
                f"output shapes: {listing(model, example)}",
            )
        for name in names:
            self._handles.append(modules[name].register_forward_hook(self._keep(name)))

    def _keep(self, name: str) -> Any:
        def hook(_m: nn.Module, _i: Any, out: Any) -> None:
            t = _first_tensor(out)
            if t is not None:
                self.outputs[name] = t

        return hook

    def take(self) -> dict[str, Tensor]:
        """The captured outputs of the last forward; clears them for the next one."""
        out, self.outputs = self.outputs, {}
        return out

    def remove(self) -> None:
        for h in self._handles:
            h.remove()
        self._handles.clear()


def check_layers(model: nn.Module, names: Sequence[str], field: str, example: Tensor) -> None:
    """Fail fast on a wrong layer name: before any training, not when the stage needing it
    starts."""
    FeatureHooks(model, names, field, example).remove()
