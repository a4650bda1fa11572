"""Which tensors of the student are widened in the DT, decided on its traced graph.

gpd.md §1: every Linear/Conv/BN/LN is widened r× on input and output channels, "except the first
layer's input and the last layer's output". The model input is not widened; a dense layer
(Linear, Conv, attention) whose output reaches the model output through parameter-free
operations only is a "last" layer (its output is not widened); every other dense layer widens its
output. Widening then flows through the graph.

A widened tensor holds, along its *channel axis*, r contiguous copies of the student's tensor
(scaled 1/r). The plan follows that axis through every operation (flatten, transpose, indexing,
concatenation…) and refuses, naming the operation and module, anything that would mix the
replicas with another axis, cut the channel axis, or is not homogeneous (adding a constant).
Layers check that they act on the channel axis (a Linear on the last axis, a Conv or BatchNorm
on axis 1). Tensors the model owns outside any layer (a ViT's cls_token and pos_embed, fetched
with get_attr) are "free": they are widened along the axis they meet widened activations on.

Ranks: a Conv's output rank is its kernel's (batched input assumed); a Linear keeps its input's
rank, which may be unknown when it reads the raw input. Operations whose effect on the channel
axis depends on an unknown rank are refused.
"""

from __future__ import annotations

import builtins
import operator
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import fx, nn
from torch.nn.modules.batchnorm import _BatchNorm
from torch.nn.modules.conv import _ConvNd

from kdcore.schemes.gpd.rule import Role, Rule, Widening
from kdcore.schemes.gpd.rule_table import RULES, find, handled

#: Parameter-free layers that act on every channel alike: ReLU and LeakyReLU are positively
#: homogeneous (gpd.md §1: "ReLU needs nothing"), pooling and dropout are per-channel or linear.
PASSTHROUGH = (
    nn.ReLU,
    nn.LeakyReLU,
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
#: Pooling acts on the spatial axes after the channel axis 1.
POOLING = PASSTHROUGH[5:]
CONTAINERS = (nn.Sequential, nn.ModuleList, nn.ModuleDict)

#: Functions and methods the plan knows, by one name per operation.
_FUNC_NAMES: dict[Callable[..., Any], str] = {
    operator.add: "add",
    operator.iadd: "add",
    torch.add: "add",
    operator.sub: "sub",
    torch.sub: "sub",
    operator.mul: "mul",
    torch.mul: "mul",
    operator.truediv: "div",
    torch.div: "div",
    torch.relu: "relu",
    F.relu: "relu",
    F.dropout: "dropout",
    torch.flatten: "flatten",
    torch.transpose: "transpose",
    torch.permute: "permute",
    torch.unsqueeze: "unsqueeze",
    torch.mean: "mean",
    torch.sum: "sum",
    torch.cat: "cat",
    torch.concat: "cat",
    operator.getitem: "getitem",
    builtins.getattr: "getattr",
}
_DEFAULT_FLATTEN_START = 0


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


def role_of(found: Rule, m: nn.Module) -> Role:
    """The rule's role for this module (a rule may decide per module, e.g. grouped convs)."""
    per_module = getattr(found, "role_of", None)
    return per_module(m) if callable(per_module) else found.role


def check_modules(model: nn.Module) -> None:
    """Fail before tracing or building on built-in layer types no rule covers."""
    handled_names: list[str] = []
    for name, m in model.named_modules():
        if isinstance(m, CONTAINERS) or _inside_handled(name, handled_names):
            continue
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


def _where(node: fx.Node) -> str:
    stack = node.meta.get("nn_module_stack") or {}
    if stack:
        path, cls = list(stack.values())[-1]
        cls_name = getattr(cls, "__name__", str(cls))
        return f"module {_label(str(path))} ({cls_name.rsplit('.', 1)[-1]})"
    return "the model's forward"


# --- what the plan knows about each value ----------------------------------------------------


@dataclass(frozen=True)
class Act:
    """A tensor of rank `ndim` (None: unknown); `chan` is its channel axis if it is widened
    (non-negative when the rank is known, else possibly counted from the back)."""

    ndim: int | None = None
    chan: int | None = None

    @property
    def wide(self) -> bool:
        return self.chan is not None


@dataclass(frozen=True)
class ShapeOf:
    """`x.shape` / `x.size()` of a widened tensor: its channel entry differs in the DT."""

    act: Act


@dataclass(frozen=True)
class Free:
    """A tensor the model owns outside any layer (get_attr), not yet known to be widened.
    `dims[i]` is the stored tensor's axis now at position i (None: added by `expand`);
    `fixed` the positions `expand` gave an explicit size (they cannot be the channel axis)."""

    name: str
    dims: tuple[int | None, ...]
    fixed: frozenset[int] = frozenset()


Val = Act | ShapeOf | Free | None
PLAIN = Act()


class _Refused(Exception):
    """An operation the plan cannot follow; turned into a ValueError naming the node."""


def _pos(d: int, ndim: int | None) -> int:
    """Axis `d` counted from the front; raises when that needs an unknown rank."""
    if d >= 0:
        return d
    if ndim is None:
        raise _Refused("the tensor's rank is unknown here, so a negative axis is ambiguous")
    return d + ndim


def _make(ndim: int | None, chan: int | None) -> Act:
    """An Act with its channel axis normalised to the front when the rank is known."""
    if chan is not None and ndim is not None and chan < 0:
        chan += ndim
    return Act(ndim, chan)


def _chan(a: Act) -> int:
    """The channel axis from the front (raises when the rank is unknown and it is not)."""
    assert a.chan is not None
    return _pos(a.chan, a.ndim)


def _from_back(a: Act) -> int:
    """The channel axis counted from the back (for broadcasting)."""
    assert a.chan is not None
    if a.chan < 0:
        return a.chan
    if a.ndim is None:
        raise _Refused("the tensor's rank is unknown here, so broadcasting is ambiguous")
    return a.chan - a.ndim


# --- operations on values ---------------------------------------------------------------------


def _flatten(a: Act, start: int, end: int) -> Act:
    """flatten(start, end): the channel axis may be the outermost of the merged axes (then the
    merged axis holds r contiguous copies); merging it under another axis mixes the replicas."""
    if a.ndim is None and end == -1 and start >= 0 and not a.wide:
        return Act(start + 1)
    if not a.wide:
        return PLAIN if a.ndim is None else Act(a.ndim - (_pos(end, a.ndim) - _pos(start, a.ndim)))
    if a.ndim is None:
        raise _Refused("the tensor's rank is unknown here, so the merged axes are ambiguous")
    s, e, c = _pos(start, a.ndim), _pos(end, a.ndim), _chan(a)
    ndim = a.ndim - (e - s)
    if c < s:
        return _make(ndim, c)
    if c == s:
        return _make(ndim, s)
    if c > e:
        return _make(ndim, c - (e - s))
    raise _Refused(f"it merges the widened channel axis {c} under axis {s}, mixing the replicas")


def _transpose(a: Act, d0: int, d1: int) -> Act:
    if not a.wide:
        return a
    c, p0, p1 = _chan(a), _pos(d0, a.ndim), _pos(d1, a.ndim)
    return _make(a.ndim, p1 if c == p0 else p0 if c == p1 else c)


def _permute(a: Act, dims: Sequence[int]) -> Act:
    if not a.wide:
        return a
    order = [_pos(d, a.ndim) for d in dims]
    return _make(a.ndim, order.index(_chan(a)))


def _unsqueeze(a: Act, d: int) -> Act:
    ndim = None if a.ndim is None else a.ndim + 1
    if not a.wide:
        return Act(ndim)
    p = _pos(d, ndim)
    c = _chan(a)
    return _make(ndim, c + 1 if p <= c else c)


def _unflatten(a: Act, d: int, sizes: Sequence[Any]) -> Act:
    ndim = None if a.ndim is None else a.ndim + len(sizes) - 1
    if not a.wide:
        return Act(ndim)
    p, c = _pos(d, a.ndim), _chan(a)
    if p == c:
        raise _Refused(f"it splits the widened channel axis {c}")
    return _make(ndim, c + len(sizes) - 1 if p < c else c)


def _reduce(a: Act, dims: Any, keepdim: bool) -> Act:
    """mean/sum over axes other than the channel axis (a sum of replicas would mix them)."""
    if dims is None:
        raise _Refused("it reduces over every axis, the widened channel axis included")
    dims = [dims] if isinstance(dims, int) else list(dims)
    if not a.wide:
        return Act(None if a.ndim is None or keepdim else a.ndim - len(dims))
    c = _chan(a)
    ps = [_pos(d, a.ndim) for d in dims]
    if c in ps:
        raise _Refused(f"it reduces over the widened channel axis {c}")
    if keepdim:
        return a
    ndim = None if a.ndim is None else a.ndim - len(ps)
    return _make(ndim, c - sum(p < c for p in ps))


def _index(a: Act, idx: Any) -> Act:
    """Basic indexing: full slices keep an axis, ints drop it, None adds one; the channel axis
    must be kept whole. Tensor indices and unknown ranks are refused on widened tensors."""
    items = list(idx) if isinstance(idx, tuple) else [idx]
    if a.ndim is None:
        raise _Refused("the tensor's rank is unknown here, so the indexed axes are ambiguous")
    if items.count(Ellipsis) > 1:
        raise _Refused("several ellipses")
    if Ellipsis in items:
        used = sum(1 for i in items if i is not None and i is not Ellipsis)
        at = items.index(Ellipsis)
        items[at : at + 1] = [slice(None)] * (a.ndim - used)
    c = _chan(a)
    pos_in, pos_out, chan_out = 0, 0, None
    for item in items:
        if item is None:
            pos_out += 1
            continue
        if isinstance(item, fx.Node) or not isinstance(item, (int, slice)):
            raise _Refused("advanced (tensor) indexing of a widened tensor")
        if pos_in == c:
            if item != slice(None):
                raise _Refused(f"it cuts the widened channel axis {c}")
            chan_out = pos_out
        pos_in += 1
        pos_out += isinstance(item, slice)
    if chan_out is None:  # the channel axis is among the trailing, untouched axes
        chan_out = pos_out + (c - pos_in)
    return _make(pos_out + (a.ndim - pos_in), chan_out)


def _number(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool)


def _expand_sizes(n: fx.Node, first: int) -> list[Any]:
    sizes = list(n.args[first:]) or list(n.kwargs.get("size", ()))
    if len(sizes) == 1 and isinstance(sizes[0], (tuple, list)):
        sizes = list(sizes[0])
    return sizes


def _arg(n: fx.Node, i: int, name: str, default: Any) -> Any:
    return n.args[i] if len(n.args) > i else n.kwargs.get(name, default)


# --- the plan -----------------------------------------------------------------------------


@dataclass
class Plan:
    """The widening of every layer with a rule (module name → Widening) and of every free
    tensor (state-dict name → its channel axis)."""

    layers: dict[str, Widening] = field(default_factory=dict)
    tensors: dict[str, int] = field(default_factory=dict)


def _trace(model: nn.Module) -> fx.Graph:
    try:
        return _Tracer().trace(model)
    except Exception as exc:  # tracing failures are user-facing: say what to do
        raise ValueError(
            f"GPD cannot expand {type(model).__name__}: its forward cannot be traced "
            f"symbolically ({type(exc).__name__}: {exc})"
        ) from exc


def _last_layers(graph: fx.Graph, modules: dict[str, nn.Module]) -> set[fx.Node]:
    """Dense layers reached backwards from the output without crossing another one."""

    def is_dense(n: fx.Node) -> bool:
        if n.op != "call_module":
            return False
        m = modules[str(n.target)]
        found = find(m)
        return found is not None and role_of(found, m) == "dense"

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
    return last


def _layer_axis(m: nn.Module, found: Rule | None, ndim: int | None) -> int | None:
    """The axis a layer acts on (-1: the last), or None for element-wise layers. Rules of other
    layer types declare it as `channel_axis`."""
    if isinstance(m, (nn.Linear, nn.LayerNorm)):
        return -1
    if isinstance(m, _ConvNd):
        wdim = m.weight.dim()
        return 1 if ndim is None else ndim - wdim + 1  # batched: 1; unbatched: 0
    if isinstance(m, (_BatchNorm, *POOLING)):
        return 1
    return getattr(found, "channel_axis", None)


_RANKS: tuple[tuple[tuple[type[nn.Module], ...], int], ...] = (
    ((nn.BatchNorm2d, nn.MaxPool2d, nn.AvgPool2d, nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d), 4),
    ((nn.MaxPool1d, nn.AvgPool1d, nn.AdaptiveAvgPool1d, nn.AdaptiveMaxPool1d), 3),
)


def _layer_rank(m: nn.Module, found: Rule | None) -> int | None:
    """The rank of the (batched) tensors a layer reads, when its type fixes it: a conv's kernel
    rank (for a rule's conv-like layer, acting on axis 1: its largest parameter's rank, unless
    the rule declares `ndim`), 4 for 2-d BatchNorm and pooling. None: any rank (Linear, LN)."""
    if isinstance(m, _ConvNd):
        return m.weight.dim()
    for types, rank in _RANKS:
        if isinstance(m, types):
            return rank
    declared = getattr(found, "ndim", None)
    if isinstance(declared, int):
        return declared
    if getattr(found, "channel_axis", None) == 1:
        ranks = [p.dim() for p in m.parameters()]
        if ranks and max(ranks) >= 3:
            return max(ranks)
    return None


class _Walk:
    """One pass over the graph in order, computing every node's Val."""

    def __init__(self, model: nn.Module, graph: fx.Graph) -> None:
        self.model = model
        self.modules = dict(model.named_modules())
        self.last = _last_layers(graph, self.modules)
        self.vals: dict[fx.Node, Val] = {}
        self.plan = Plan()
        self.free: dict[str, int | None] = {}  # free tensor → channel axis (None: not widened)

    # ---- helpers

    def val(self, a: Any) -> Val:
        return self.vals.get(a) if isinstance(a, fx.Node) else None

    def act(self, a: Any) -> Act:
        """The Act of an argument; a free tensor used this way is not widened."""
        v = self.val(a)
        if isinstance(v, Free):
            self.settle(v, None)
            return PLAIN
        if isinstance(v, ShapeOf):
            raise _Refused("the shape of a widened tensor is used as a tensor")
        return v if isinstance(v, Act) else PLAIN

    def settle(self, f: Free, pos: int | None) -> None:
        """Decide free tensor `f`: widened along its current axis `pos`, or not (None)."""
        axis = None
        if pos is not None:
            if pos < 0 or pos >= len(f.dims) or f.dims[pos] is None or pos in f.fixed:
                raise _Refused(f"tensor {f.name!r} would be widened along an axis it lacks")
            axis = f.dims[pos]
            assert axis is not None
            size = self.tensor(f.name).shape[axis]
            if size == 1:
                raise _Refused(f"tensor {f.name!r} broadcasts over the widened channel axis")
        if self.free.setdefault(f.name, axis) != axis:
            raise _Refused(f"tensor {f.name!r} is used both widened and not (or along two axes)")

    def tensor(self, name: str) -> torch.Tensor:
        owner, _, attr = name.rpartition(".")
        t = getattr(self.model.get_submodule(owner), attr)
        assert isinstance(t, torch.Tensor), name
        return t

    # ---- node kinds

    def visit(self, n: fx.Node) -> None:
        try:
            self.vals[n] = getattr(self, f"on_{n.op}")(n)
        except _Refused as why:
            name = getattr(n.target, "__name__", str(n.target))
            what = "module" if n.op == "call_module" else "operation"
            where = (
                f"{_label(str(n.target))} ({type(self.modules[str(n.target)]).__name__})"
                if n.op == "call_module"
                else f"{name!r} in {_where(n)}"
            )
            raise ValueError(f"GPD cannot expand {what} {where}: {why}") from None

    def on_placeholder(self, n: fx.Node) -> Val:
        return PLAIN

    def on_get_attr(self, n: fx.Node) -> Val:
        t = self.tensor(str(n.target))
        return Free(str(n.target), tuple(range(t.dim())))

    def on_output(self, n: fx.Node) -> Val:
        for a in n.all_input_nodes:
            v = self.val(a)
            if isinstance(v, Free):
                self.settle(v, None)
            elif isinstance(v, (Act, ShapeOf)) and (isinstance(v, ShapeOf) or v.wide):
                raise ValueError(
                    "GPD cannot expand this model: its output is not produced by a Linear/Conv "
                    "layer (through parameter-free operations), so the DT's output would be wide"
                )
        return None

    def on_call_module(self, n: fx.Node) -> Val:
        name, m = str(n.target), self.modules[str(n.target)]
        for extra in n.args[1:]:
            if isinstance(self.val(extra), (Act, Free)) and self.act(extra).wide:
                raise _Refused("it takes a widened tensor as a second input")
        a = self.act(n.args[0]) if n.args else PLAIN
        found = find(m)
        if a.ndim is None and (rank := _layer_rank(m, found)) is not None:
            a = _make(rank, a.chan)  # the layer tells the rank of its (batched) input
        if found is None:
            return self.passthrough_module(m, a)
        axis = _layer_axis(m, found, a.ndim)
        if a.wide and axis is not None:
            self.check_axis(a, axis)
        if isinstance(m, nn.LayerNorm) and a.wide and len(m.normalized_shape) != 1:
            raise _Refused("it normalises several axes; only the channel axis is supported")
        role = role_of(found, m)
        w = (
            Widening(in_wide=a.wide, out_wide=n not in self.last)
            if role == "dense"
            else Widening(in_wide=a.wide, out_wide=a.wide)
        )
        if self.plan.layers.setdefault(name, w) != w:
            raise _Refused("it is called on tensors that are widened differently")
        if role != "dense":
            return a
        out_axis = _layer_axis(m, found, a.ndim)
        return _make(a.ndim, out_axis if w.out_wide and out_axis is not None else None)

    def passthrough_module(self, m: nn.Module, a: Act) -> Act:
        if isinstance(m, nn.Flatten):
            return _flatten(a, m.start_dim, m.end_dim)
        if isinstance(m, POOLING) and a.wide:
            self.check_axis(a, 1)
        return a

    def check_axis(self, a: Act, axis: int) -> None:
        """A layer acting on `axis` must see the widened channels there."""
        if axis == -1:
            ok = a.chan == -1 if a.ndim is None else a.chan == a.ndim - 1
        else:
            ok = _chan(a) == axis
        if not ok:
            raise _Refused(f"it acts on axis {axis} but the widened channels are on axis {a.chan}")

    def on_call_function(self, n: fx.Node) -> Val:
        op = _FUNC_NAMES.get(n.target)  # type: ignore[arg-type]
        return self.operation(n, op, getattr(n.target, "__name__", str(n.target)))

    def on_call_method(self, n: fx.Node) -> Val:
        return self.operation(n, str(n.target), str(n.target))

    # ---- functions and methods

    def operation(self, n: fx.Node, op: str | None, label: str) -> Val:
        """Dispatch on the operation; untouched widened tensors pass any operation."""
        vals = [self.vals.get(a) for a in n.all_input_nodes]
        involved = any(
            isinstance(v, (ShapeOf, Free)) or (isinstance(v, Act) and v.wide) for v in vals
        )
        handler = getattr(self, f"op_{op}", None) if op else None
        if not involved:
            return handler(n) if handler is not None and op in _PLAIN_OPS else PLAIN
        if handler is None:
            for v in vals:  # a free tensor fed to an unknown operation stays as it is
                if isinstance(v, Free):
                    self.settle(v, None)
            if any(isinstance(v, ShapeOf) or (isinstance(v, Act) and v.wide) for v in vals):
                raise _Refused("no inverse-reparameterization rule for it on widened channels yet")
            return PLAIN
        return handler(n)

    def op_relu(self, n: fx.Node) -> Val:
        v = self.val(n.args[0])
        return v if isinstance(v, Free) else self.act(n.args[0])

    op_dropout = op_contiguous = op_clone = op_to = op_float = op_relu

    def op_add(self, n: fx.Node) -> Val:
        """A sum of widened tensors (their replicas add up); with a free tensor, that tensor is
        widened along the channel axis. Constants and unwidened tensors are not homogeneous."""
        operands = list(n.args) + list(n.kwargs.values())
        if len(n.args) != 2 or n.kwargs or not all(isinstance(a, fx.Node) for a in operands):
            raise _Refused("no inverse-reparameterization rule for it on widened channels yet")
        vals = [self.val(a) for a in operands]
        acts = [v for v in vals if isinstance(v, Act) and v.wide]
        if not acts:
            for v in vals:
                if isinstance(v, Free):
                    self.settle(v, None)
            return PLAIN
        backs = {_from_back(a) for a in acts}
        if len(backs) != 1:
            raise _Refused("it adds tensors widened along different axes")
        back = backs.pop()
        for v in vals:
            if isinstance(v, Free):
                self.settle(v, len(v.dims) + back)
            elif not (isinstance(v, Act) and v.wide):
                raise _Refused(
                    "no inverse-reparameterization rule for it on widened channels yet "
                    "(one operand is not widened)"
                )
        ndims = [a.ndim for a in acts]
        ndim = None if None in ndims else max(d for d in ndims if d is not None)
        return _make(ndim, back if ndim is None else back + ndim)

    op_sub = op_add

    def op_mul(self, n: fx.Node) -> Val:
        """Scaling by a Python number is homogeneous; products of tensors are not."""
        a, b = n.args[0], n.args[1] if len(n.args) > 1 else None
        divide = n.target in (operator.truediv, torch.div, "div")
        if _number(b):
            return self.act(a)
        if _number(a) and not divide:
            return self.act(b)
        raise _Refused("it multiplies or divides by a tensor (not homogeneous)")

    op_div = op_mul

    def op_flatten(self, n: fx.Node) -> Val:
        start = _arg(n, 1, "start_dim", _DEFAULT_FLATTEN_START)
        return _flatten(self.act(n.args[0]), start, _arg(n, 2, "end_dim", -1))

    def op_transpose(self, n: fx.Node) -> Val:
        return _transpose(self.act(n.args[0]), _arg(n, 1, "dim0", 0), _arg(n, 2, "dim1", 1))

    def op_permute(self, n: fx.Node) -> Val:
        dims = list(n.args[1:]) or list(n.kwargs.get("dims", ()))
        if len(dims) == 1 and isinstance(dims[0], (tuple, list)):
            dims = list(dims[0])
        return _permute(self.act(n.args[0]), dims)

    def op_unsqueeze(self, n: fx.Node) -> Val:
        return _unsqueeze(self.act(n.args[0]), _arg(n, 1, "dim", 0))

    def op_unflatten(self, n: fx.Node) -> Val:
        return _unflatten(self.act(n.args[0]), _arg(n, 1, "dim", 0), _arg(n, 2, "sizes", ()))

    def op_mean(self, n: fx.Node) -> Val:
        return _reduce(self.act(n.args[0]), _arg(n, 1, "dim", None), _arg(n, 2, "keepdim", False))

    op_sum = op_mean

    def op_getattr(self, n: fx.Node) -> Val:
        v, attr = self.val(n.args[0]), n.args[1]
        if isinstance(v, Act) and v.wide and attr == "shape":
            return ShapeOf(v)
        if isinstance(v, Act) and v.wide and attr in ("ndim", "dtype", "device"):
            return None
        if isinstance(v, Free):
            self.settle(v, None)
            return None
        raise _Refused(f"attribute {attr!r} of a widened tensor")

    def op_size(self, n: fx.Node) -> Val:
        a = self.act(n.args[0])
        d = _arg(n, 1, "dim", None)
        if d is None:
            return ShapeOf(a)
        if _pos(d, a.ndim) == _chan(a):
            raise _Refused("it reads the size of the widened channel axis")
        return None

    def op_dim(self, n: fx.Node) -> Val:
        self.act(n.args[0])
        return None

    def op_getitem(self, n: fx.Node) -> Val:
        v, idx = self.val(n.args[0]), n.args[1]
        if isinstance(v, ShapeOf):
            if not isinstance(idx, int) or _pos(idx, v.act.ndim) == _chan(v.act):
                raise _Refused("it reads the size of the widened channel axis")
            return None
        if isinstance(v, Free):
            self.settle(v, None)
            return PLAIN
        a = self.act(n.args[0])
        return _index(a, idx) if a.wide else PLAIN

    def op_expand(self, n: fx.Node) -> Val:
        """Broadcasting to more or larger axes; the channel axis must keep its size (-1)."""
        v, sizes = self.val(n.args[0]), _expand_sizes(n, 1)
        if isinstance(v, Free):
            lead = len(sizes) - len(v.dims)
            dims = (None,) * lead + v.dims
            fixed = {i for i, s in enumerate(sizes) if not (isinstance(s, int) and s == -1)}
            return Free(v.name, dims, v.fixed | frozenset(fixed))
        a = self.act(n.args[0])
        if a.ndim is None:
            raise _Refused("the tensor's rank is unknown here")
        c = _chan(a) + len(sizes) - a.ndim
        if sizes[c] != -1:
            raise _Refused("it gives the widened channel axis an explicit size")
        return _make(len(sizes), c)

    def op_cat(self, n: fx.Node) -> Val:
        """Concatenation along a non-channel axis of tensors all widened alike; free tensors
        among them are widened along the same axis."""
        parts, dim = _arg(n, 0, "tensors", []), _arg(n, 1, "dim", 0)
        vals = [self.val(p) for p in parts]
        acts = [v for v in vals if isinstance(v, Act) and v.wide]
        if not acts:
            for v in vals:
                if isinstance(v, Free):
                    self.settle(v, None)
            return PLAIN
        a = acts[0]
        c = _chan(a)
        if any(_chan(b) != c for b in acts) or _pos(dim, a.ndim) == c:
            raise _Refused(f"it concatenates along or across the widened channel axis {c}")
        for v in vals:
            if isinstance(v, Free):
                self.settle(v, c)
            elif not (isinstance(v, Act) and v.wide):
                raise _Refused("it concatenates widened and unwidened tensors")
        return a


#: Operations whose rank the plan follows on unwidened tensors too (a Flatten before the first
#: layer tells a Linear after it that its output is 2-D).
_PLAIN_OPS = {"flatten", "unsqueeze", "transpose", "permute", "unflatten"}


def analyse(model: nn.Module) -> Plan:
    """Every layer's and every free tensor's widening (gpd.md §1), or a ValueError naming the
    first module or operation that cannot be widened."""
    check_modules(model)
    graph = _trace(model)
    walk = _Walk(model, graph)
    for n in graph.nodes:
        walk.visit(n)
    walk.plan.tensors = {k: v for k, v in walk.free.items() if v is not None}
    return walk.plan


def plan(model: nn.Module) -> dict[str, Widening]:
    """Module name → Widening for every layer with a rule that the forward calls (gpd.md §1).

    For models whose own tensors are widened too (a ViT's cls_token, pos_embed) use `analyse`:
    this older entry point would leave them unwidened, so it refuses such models.
    """
    p = analyse(model)
    if p.tensors:
        raise ValueError(
            f"GPD: the model's tensors {sorted(p.tensors)} must be widened too; expand with "
            "plan.analyse() and transformer_rules.widen_tensors()"
        )
    return p.layers
