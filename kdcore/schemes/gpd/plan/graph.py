"""The graph the plan walks: the student traced with torch.fx, and how its nodes are named.

Tracing stops at every layer with a rule (its insides are the rule's business), and every
refusal names the module or operation it is about, so these live together.
"""

from __future__ import annotations

from torch import fx, nn

from kdcore.schemes.gpd.rule_table import find, handled


class _Tracer(fx.Tracer):
    """Layers with a rule are leaves (their insides are the rule's business)."""

    def is_leaf_module(self, m: nn.Module, module_qualified_name: str) -> bool:
        return handled(m) or super().is_leaf_module(m, module_qualified_name)


def trace(model: nn.Module) -> fx.Graph:
    """The model's graph, or a ValueError saying that its forward cannot be traced."""
    try:
        return _Tracer().trace(model)
    except Exception as exc:  # tracing failures are user-facing: say what to do
        raise ValueError(
            f"GPD cannot expand {type(model).__name__}: its forward cannot be traced "
            f"symbolically ({type(exc).__name__}: {exc})"
        ) from exc


def label(name: str) -> str:
    """A module name as refusals quote it (the model itself is '<root>')."""
    return repr(name) if name else "'<root>'"


def where(node: fx.Node) -> str:
    """The innermost module whose forward runs `node`, for refusals of operations."""
    stack = node.meta.get("nn_module_stack") or {}
    if stack:
        path, cls = list(stack.values())[-1]
        cls_name = getattr(cls, "__name__", str(cls))
        return f"module {label(str(path))} ({cls_name.rsplit('.', 1)[-1]})"
    return "the model's forward"


def last_layers(graph: fx.Graph, modules: dict[str, nn.Module]) -> set[fx.Node]:
    """Dense layers reached backwards from the output without crossing another one."""

    def is_dense(n: fx.Node) -> bool:
        if n.op != "call_module":
            return False
        m = modules[str(n.target)]
        found = find(m)
        return found is not None and found.role_of(m) == "dense"

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
