"""The one table of GPD layer rules: every layer type GPD widens → its rule, listed here only.

Which rule widens a layer must not depend on which modules happen to be imported, or in what
order; so the rules are plain classes and this module lists them all. A layer type listed twice
is a mistake, hence an error naming it (as for methods in `kdcore/registry.py`), never a silent
replacement. A subclass of a listed type gets its base's rule (`find`).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from types import MappingProxyType

from torch import nn

from kdcore.models.zoo.vit import Attention
from kdcore.schemes.gpd.basic_rules import BatchNorm, Dense
from kdcore.schemes.gpd.cbr_blocks import BranchConv2d, BranchDWConv2d, BranchLinear
from kdcore.schemes.gpd.cbr_rules import BranchConv, BranchDense, BranchDepthwise
from kdcore.schemes.gpd.grouped_rules import Conv
from kdcore.schemes.gpd.rule import Rule
from kdcore.schemes.gpd.transformer_rules import Activation, LayerNorm, SelfAttention

RuleTable = Mapping[type[nn.Module], Rule]


def build_table(entries: Iterable[tuple[type[nn.Module], Rule]]) -> RuleTable:
    """A read-only table of `entries`; ValueError if a layer type appears twice."""
    table: dict[type[nn.Module], Rule] = {}
    for layer_type, rule in entries:
        if layer_type in table:
            raise ValueError(
                f"GPD layer type {layer_type.__name__} is registered twice "
                f"({type(table[layer_type]).__name__} and {type(rule).__name__})"
            )
        table[layer_type] = rule
    return MappingProxyType(table)


RULES: RuleTable = build_table(
    [
        (nn.Linear, Dense()),
        (nn.Conv1d, Conv()),
        (nn.Conv2d, Conv()),
        (nn.BatchNorm1d, BatchNorm()),
        (nn.BatchNorm2d, BatchNorm()),
        (nn.LayerNorm, LayerNorm()),
        (nn.GELU, Activation()),
        (nn.SiLU, Activation()),
        (nn.Tanh, Activation()),
        (nn.Sigmoid, Activation()),
        (nn.ELU, Activation()),
        (nn.ReLU6, Activation()),
        (nn.Hardswish, Activation()),
        (nn.Mish, Activation()),
        (Attention, SelfAttention()),
        (BranchConv2d, BranchConv()),
        (BranchLinear, BranchDense()),
        (BranchDWConv2d, BranchDepthwise()),
    ]
)


def find(m: nn.Module, table: RuleTable = RULES) -> Rule | None:
    """The rule for `m`'s most specific listed class (a subclass inherits its base's)."""
    for cls in type(m).__mro__:
        if cls in table:
            return table[cls]
    return None


def handled(m: nn.Module) -> bool:
    """Whether some rule widens `m` (its insides are then that rule's business)."""
    return find(m) is not None
