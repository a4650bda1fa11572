"""The size of an architecture, estimated on the meta device: exact parameter counts, every
tensor a forward makes (not only what layers return), and no memory allocated."""

from __future__ import annotations

from typing import Any

import psutil
import pytest
import torch
from torch import nn

from kdcore.estimate import Unestimable, model_size
from kdcore.models.registry import build_model


@pytest.mark.parametrize(
    ("arch", "shape", "kwargs"),
    [
        ("mlp", (1, 8, 8), {"hidden": [32, 16]}),
        ("convnet", (3, 16, 16), {"channels": [8, 16]}),
        ("resnet8", (3, 32, 32), {}),
        ("vit_tiny", (3, 16, 16), {"dim": 32, "depth": 2}),
        ("mobilenet_tiny", (3, 16, 16), {}),
        ("conv1d", (2, 32), {}),
    ],
)
def test_the_estimate_counts_the_parameters_of_the_real_model(
    arch: str, shape: tuple[int, ...], kwargs: dict[str, Any]
) -> None:
    real = build_model(arch, shape, 10, **kwargs)
    size = model_size(arch, kwargs, shape, 10)
    assert size.params == sum(p.numel() for p in real.parameters())
    assert size.activations > size.peak > 0


def test_the_estimate_sees_tensors_no_layer_returns() -> None:
    """ViT's attention matrix is made inside a module's forward, not returned by a layer."""
    kwargs = {"dim": 32, "depth": 2, "heads": 4, "patch_size": 1}
    size = model_size("vit_tiny", kwargs, (1, 8, 8), 4)
    tokens = 8 * 8 + 1
    assert size.peak >= 4 * tokens * tokens
    assert size.activations >= 2 * 4 * tokens * tokens


def test_the_estimate_allocates_nothing() -> None:
    """Ten billion parameters (40 GB of float32) estimated on the meta device."""
    before = psutil.Process().memory_info().rss
    size = model_size("mlp", {"hidden": [100000, 100000]}, (1, 8, 8), 10)
    assert size.params == 64 * 100000 + 100000 + 100000 * 100000 + 100000 + 100000 * 10 + 10
    assert psutil.Process().memory_info().rss - before < 1 << 30  # not the 40 GB it describes
    assert torch.get_default_device().type == "cpu"  # the meta device did not leak


def test_a_bad_kwarg_is_a_value_error() -> None:
    with pytest.raises(ValueError, match="positive integers"):
        model_size("mlp", {"hidden": [0]}, (8,), 3)


def test_a_model_the_meta_device_cannot_build_is_not_estimated_nor_refused(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A factory that reads a value out of a parameter works for real but not on meta: the
    estimate says so (`Unestimable`), and parse_spec lets the spec through to the worker."""
    from kdcore.models import registry as zoo
    from kdcore.validation import parse_spec

    def reads_weights(input_shape: tuple[int, ...], num_classes: int) -> nn.Module:
        layer = nn.Linear(int(torch.tensor(input_shape).prod()), num_classes)
        if float(layer.weight.abs().sum()) < 0:  # reads a value: .item() fails on meta
            raise AssertionError("a sum of absolute values")
        return nn.Sequential(nn.Flatten(), layer)

    zoo.names()  # load the zoo before adding to it
    monkeypatch.setitem(zoo._zoo._items, "reads_weights", reads_weights)
    with pytest.raises(Unestimable):
        model_size("reads_weights", {}, (8,), 3)
    parse_spec(
        {
            "name": "t",
            "teacher": {"arch": "mlp", "train": {"epochs": 1}},
            "student": {"arch": "reads_weights"},
            "data": {"source": "digits"},
        }
    )
