"""The pass over the traced graph, node kind by node kind, and `analyse`, the plan's entry point.

Each node's value is computed from its inputs' in graph order: placeholders are plain, get_attr
gives a free tensor, a layer with a rule records its Widening (dense layers widen their output
unless last), functions and methods go to their handlers, and the output must not be wide.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from torch import fx, nn

from kdcore.schemes.gpd.plan import channel_axis, operations
from kdcore.schemes.gpd.plan.graph import label, last_layers, trace, where
from kdcore.schemes.gpd.plan.layer_types import (
    POOLING,
    check_modules,
    layer_axis,
    layer_rank,
)
from kdcore.schemes.gpd.plan.state import WalkState
from kdcore.schemes.gpd.plan.values import (
    PLAIN,
    Act,
    Free,
    Refused,
    ShapeOf,
    Val,
    chan_from_front,
    make_act,
)
from kdcore.schemes.gpd.rule import Widening
from kdcore.schemes.gpd.rule_table import find


@dataclass
class Plan:
    """The widening of every layer with a rule (module name → Widening) and of every free
    tensor (state-dict name → its channel axis)."""

    layers: dict[str, Widening] = field(default_factory=dict)
    tensors: dict[str, int] = field(default_factory=dict)


class _Walk:
    """One pass over the graph in order, computing every node's Val."""

    def __init__(self, model: nn.Module, graph: fx.Graph) -> None:
        self.modules = dict(model.named_modules())
        self.last = last_layers(graph, self.modules)
        self.state = WalkState(model)
        self.plan = Plan()

    def visit(self, n: fx.Node) -> None:
        try:
            self.state.vals[n] = self.value(n)
        except Refused as why:
            name = getattr(n.target, "__name__", str(n.target))
            what = "module" if n.op == "call_module" else "operation"
            subject = (
                f"{label(str(n.target))} ({type(self.modules[str(n.target)]).__name__})"
                if n.op == "call_module"
                else f"{name!r} in {where(n)}"
            )
            raise ValueError(f"GPD cannot expand {what} {subject}: {why}") from None

    def value(self, n: fx.Node) -> Val:
        """The node's value, by node kind."""
        if n.op == "placeholder":
            return PLAIN
        if n.op == "get_attr":
            t = self.state.tensor(str(n.target))
            return Free(str(n.target), tuple(range(t.dim())))
        if n.op == "output":
            return self.output(n)
        if n.op == "call_module":
            return self.call_module(n)
        if n.op == "call_function":
            op = operations.FUNCTION_NAMES.get(n.target) if callable(n.target) else None
            return operations.apply(self.state, n, op)
        if n.op == "call_method":
            return operations.apply(self.state, n, str(n.target))
        raise AssertionError(f"unknown fx node kind {n.op!r}")

    def output(self, n: fx.Node) -> Val:
        for a in n.all_input_nodes:
            v = self.state.val(a)
            if isinstance(v, Free):
                self.state.settle(v, None)
            elif isinstance(v, (Act, ShapeOf)) and (isinstance(v, ShapeOf) or v.wide):
                raise ValueError(
                    "GPD cannot expand this model: its output is not produced by a Linear/Conv "
                    "layer (through parameter-free operations), so the DT's output would be wide"
                )
        return None

    def call_module(self, n: fx.Node) -> Val:
        name, m = str(n.target), self.modules[str(n.target)]
        for extra in n.args[1:]:
            if isinstance(self.state.val(extra), (Act, Free)) and self.state.act(extra).wide:
                raise Refused("it takes a widened tensor as a second input")
        a = self.state.act(n.args[0]) if n.args else PLAIN
        found = find(m)
        if a.ndim is None and (rank := layer_rank(m, found)) is not None:
            a = make_act(rank, a.chan)  # the layer tells the rank of its (batched) input
        if found is None:
            return self.passthrough_module(m, a)
        axis = layer_axis(m, found, a.ndim)
        if a.wide and axis is not None:
            self.check_axis(a, axis)
        if isinstance(m, nn.LayerNorm) and a.wide and len(m.normalized_shape) != 1:
            raise Refused("it normalises several axes; only the channel axis is supported")
        role = found.role_of(m)
        w = (
            Widening(in_wide=a.wide, out_wide=n not in self.last)
            if role == "dense"
            else Widening(in_wide=a.wide, out_wide=a.wide)
        )
        if self.plan.layers.setdefault(name, w) != w:
            raise Refused("it is called on tensors that are widened differently")
        if role != "dense":
            return a
        out_axis = layer_axis(m, found, a.ndim)
        return make_act(a.ndim, out_axis if w.out_wide and out_axis is not None else None)

    def passthrough_module(self, m: nn.Module, a: Act) -> Act:
        if isinstance(m, nn.Flatten):
            return channel_axis.flatten(a, m.start_dim, m.end_dim)
        if isinstance(m, POOLING) and a.wide:
            self.check_axis(a, 1)
        return a

    def check_axis(self, a: Act, axis: int) -> None:
        """A layer acting on `axis` must see the widened channels there."""
        if axis == -1:
            ok = a.chan == -1 if a.ndim is None else a.chan == a.ndim - 1
        else:
            ok = chan_from_front(a) == axis
        if not ok:
            raise Refused(f"it acts on axis {axis} but the widened channels are on axis {a.chan}")


def analyse(model: nn.Module) -> Plan:
    """Every layer's and every free tensor's widening (gpd.md §1), or a ValueError naming the
    first module or operation that cannot be widened."""
    check_modules(model)
    graph = trace(model)
    walk = _Walk(model, graph)
    for n in graph.nodes:
        walk.visit(n)
    walk.plan.tensors = {k: v for k, v in walk.state.free.items() if v is not None}
    return walk.plan
