"""The one GPD rule table: explicit, read-only, and a layer type listed twice is an error."""

from __future__ import annotations

import pytest
from torch import nn

from kdcore.schemes.gpd.basic_rules import BatchNorm, Dense
from kdcore.schemes.gpd.grouped_rules import Conv
from kdcore.schemes.gpd.layers import SCALED_ACTIVATIONS, GPDBatchNorm2d
from kdcore.schemes.gpd.rule_table import RULES, build_table, find, handled
from kdcore.schemes.gpd.transformer_rules import Activation


def test_a_layer_type_listed_twice_is_an_error_naming_it() -> None:
    with pytest.raises(ValueError, match=r"Linear is registered twice \(Dense and Conv\)"):
        build_table([(nn.Linear, Dense()), (nn.BatchNorm1d, BatchNorm()), (nn.Linear, Conv())])


def test_distinct_layer_types_build_a_read_only_table() -> None:
    table = build_table([(nn.Linear, Dense()), (nn.Conv2d, Conv())])
    assert set(table) == {nn.Linear, nn.Conv2d}
    with pytest.raises(TypeError):
        table[nn.Conv1d] = Conv()  # type: ignore[index]


def test_every_scaled_activation_has_the_activation_rule() -> None:
    for activation in SCALED_ACTIVATIONS:
        assert isinstance(RULES[activation], Activation), activation.__name__


def test_a_subclass_gets_its_bases_rule_and_unlisted_layers_none() -> None:
    assert isinstance(find(GPDBatchNorm2d(4, 2)), BatchNorm)
    assert isinstance(find(nn.Conv1d(2, 2, 3)), Conv)
    assert find(nn.GroupNorm(2, 4)) is None
    assert not handled(nn.ReLU())
