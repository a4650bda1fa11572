"""Which tensors of the student are widened in the DT, decided on its traced graph.

gpd.md §1: every Linear/Conv/BN is widened r× on input and output channels, "except the first
layer's input and the last layer's output". The model input is not widened; a Linear/Conv whose
output reaches the model output through parameter-free operations only is a "last" layer (its
output is not widened); every other Linear/Conv widens its output. Widening then flows through
parameter-free operations, which must act on each replica alike (ReLU, pooling, residual adds,
flattening the channel axis with what follows it).
"""

from __future__ import annotations

import operator
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import fx, nn

from kdcore.schemes.gpd.rules import RULES, Widening, find, handled

#: Parameter-free layers that act on every channel alike: ReLU is positively homogeneous
#: (gpd.md §1: "ReLU needs nothing"), pooling and dropout are per-channel or linear.
PASSTHROUGH = (
    nn.ReLU,
    nn.Identity,
    nn.Flatten,
    nn.Dropout,
    nn.MaxPool1d,
    nn.MaxPool2d,
    nn.AvgPool1d,
    nn.AvgPool2d,
    nn.AdaptiveAvgPool1d,
    nn.AdaptiveAvgPool2d,
    nn.AdaptiveMaxPool1d,
    nn.AdaptiveMaxPool2d,
)
CONTAINERS = (nn.Sequential, nn.ModuleList, nn.ModuleDict)
#: Functions/methods allowed on widened tensors (replica-wise, or sums of equal states).
_FUNCS: set[Callable[..., Any]] = {operator.add, torch.add, torch.relu, F.relu, torch.flatten}
_METHODS = {"add", "relu", "flatten"}


def _supported_names() -> str:
    return ", ".join(sorted({t.__name__ for t in (*RULES, *PASSTHROUGH)}))


class _Tracer(fx.Tracer):
    """Layers with a rule are leaves (their insides are the rule's business)."""

    def is_leaf_module(self, m: nn.Module, module_qualified_name: str) -> bool:
        return handled(m) or super().is_leaf_module(m, module_qualified_name)


def _label(name: str) -> str:
    return repr(name) if name else "'<root>'"


def _inside_handled(name: str, handled_names: list[str]) -> bool:
    return any(name.startswith(h + ".") for h in handled_names)


def check_modules(model: nn.Module) -> None:
    """Fail before tracing or building on layer types no rule covers."""
    handled_names: list[str] = []
    for name, m in model.named_modules():
        if isinstance(m, CONTAINERS) or _inside_handled(name, handled_names):
            continue
        if isinstance(m, (nn.Conv1d, nn.Conv2d)) and m.groups != 1:
            raise ValueError(
                f"GPD cannot expand module {_label(name)} ({type(m).__name__} with "
                f"groups={m.groups}): depthwise/grouped convolutions are not supported yet"
            )
        if handled(m):
            handled_names.append(name)
            continue
        builtin = type(m).__module__.startswith("torch.nn")
        if builtin and not isinstance(m, PASSTHROUGH):
            raise ValueError(
                f"GPD cannot expand module {_label(name)} ({type(m).__name__}): no inverse-"
                f"reparameterization rule for this layer type yet (supported: "
                f"{_supported_names()})"
            )
    # Custom modules with tensors of their own second, so a built-in layer is named first.
    for name, m in model.named_modules():
        if handled(m) or _inside_handled(name, handled_names):
            continue
        builtin = type(m).__module__.startswith("torch.nn")
        own = [n for n, _ in m.named_parameters(recurse=False)]
        own += [n for n, b in m.named_buffers(recurse=False) if b is not None]
        if not builtin and own:
            raise ValueError(
                f"GPD cannot expand module {_label(name)} ({type(m).__name__}): it holds its "
                f"own tensors ({', '.join(own)}), for which no widening rule exists"
            )


def _where(node: fx.Node) -> str:
    stack = node.meta.get("nn_module_stack") or {}
    if stack:
        path, cls = list(stack.values())[-1]
        cls_name = getattr(cls, "__name__", str(cls))
        return f"module {_label(str(path))} ({cls_name.rsplit('.', 1)[-1]})"
    return "the model's forward"


def plan(model: nn.Module) -> dict[str, Widening]:
    """Module name → Widening for every layer with a rule that the forward calls (gpd.md §1)."""
    check_modules(model)
    try:
        graph = _Tracer().trace(model)
    except Exception as exc:  # tracing failures are user-facing: say what to do
        raise ValueError(
            f"GPD cannot expand {type(model).__name__}: its forward cannot be traced "
            f"symbolically ({type(exc).__name__}: {exc})"
        ) from exc
    modules = dict(model.named_modules())

    def is_dense(n: fx.Node) -> bool:
        if n.op != "call_module":
            return False
        found = find(modules[str(n.target)])
        return found is not None and found.role == "dense"

    # Last layers: Linear/Conv reached backwards from the output without crossing another one.
    output = next(n for n in graph.nodes if n.op == "output")
    last: set[fx.Node] = set()
    stack, seen = list(output.all_input_nodes), set()
    while stack:
        n = stack.pop()
        if n in seen:
            continue
        seen.add(n)
        if is_dense(n):
            last.add(n)
        else:
            stack.extend(n.all_input_nodes)

    wide: dict[fx.Node, bool] = {}
    result: dict[str, Widening] = {}
    for n in graph.nodes:
        ins = [wide[a] for a in n.all_input_nodes]
        any_wide = any(ins)
        if n.op == "placeholder":
            wide[n] = False
            continue
        if n.op == "output":
            if any_wide:
                raise ValueError(
                    "GPD cannot expand this model: its output is not produced by a Linear/Conv "
                    "layer (through parameter-free operations), so the DT's output would be wide"
                )
            continue
        if n.op == "get_attr":
            raise ValueError(
                f"GPD cannot expand this model: {_where(n)} uses tensor {n.target!r} directly"
            )
        if n.op == "call_module":
            name, m = str(n.target), modules[str(n.target)]
            found = find(m)
            w = None
            if found is not None and found.role == "dense":
                w = Widening(in_wide=any_wide, out_wide=n not in last)
            elif found is not None:
                w = Widening(in_wide=any_wide, out_wide=any_wide)
            if w is not None:
                if result.setdefault(name, w) != w:
                    raise ValueError(
                        f"GPD cannot expand module {_label(name)}: it is called on tensors that "
                        "are widened differently"
                    )
                wide[n] = w.out_wide
            else:
                wide[n] = any_wide
            continue
        # call_function / call_method: anything goes before the first layer (raw input).
        if any_wide:
            ok = n.target in _FUNCS if n.op == "call_function" else n.target in _METHODS
            if ok and n.target in (torch.flatten, "flatten"):
                start = n.args[1] if len(n.args) > 1 else n.kwargs.get("start_dim", 0)
                ok = start == 1
            if ok and n.target in (operator.add, torch.add, "add"):
                # Only sums of equally widened tensors: adding a constant is not homogeneous.
                tensors = [a for a in n.args if isinstance(a, fx.Node)]
                ok = len(tensors) == len(n.args) and not n.kwargs and len(set(ins)) == 1
            if not ok:
                name = getattr(n.target, "__name__", str(n.target))
                raise ValueError(
                    f"GPD cannot expand operation {name!r} in {_where(n)}: no inverse-"
                    "reparameterization rule for it on widened channels yet"
                )
        wide[n] = any_wide
    return result
