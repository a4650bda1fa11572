"""Every export format round-trips, and the check really rejects a wrong file."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import pytest
import torch
from torch import Tensor, nn

from kdcore import export
from kdcore.export import (
    KNOWN_FORMATS,
    TOLERANCE,
    Artifact,
    ExportError,
    export_student,
    load_safetensors_student,
)
from kdcore.models import registry as model_registry

ALL_FORMATS = ["torchscript", "torch_export", "onnx", "safetensors"]


class TinyMLP(nn.Module):
    def __init__(self, in_features: int, num_classes: int, hidden: int = 16):
        super().__init__()
        self.fc1 = nn.Linear(in_features, hidden)
        self.fc2 = nn.Linear(hidden, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc2(torch.relu(self.fc1(x.flatten(1))))


class TinyConvBN(nn.Module):
    def __init__(self, channels: int, num_classes: int, width: int = 4):
        super().__init__()
        self.conv = nn.Conv2d(channels, width, 3, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(width)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(width, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc(self.pool(torch.relu(self.bn(self.conv(x)))).flatten(1))


class BatchBaked(nn.Module):
    """Reads the batch size as a Python int: tracing bakes it in, so other sizes break."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(6, 3)

    def forward(self, x: Tensor) -> Tensor:
        n = int(x.shape[0])
        return self.fc(x) * torch.ones(n, 1)


_TEST_ARCHS: dict[str, Callable[..., nn.Module]] = {
    "test_mlp": lambda shape, k, **kw: TinyMLP(int(np.prod(shape)), k, **kw),
    "test_convbn": lambda shape, k, **kw: TinyConvBN(shape[0], k, **kw),
}


@pytest.fixture(autouse=True)
def _test_archs(monkeypatch: pytest.MonkeyPatch) -> None:
    """Let load_safetensors_student rebuild the test-only architectures."""
    real = model_registry.build_model

    def build(arch: str, input_shape: Any, num_classes: int, **kwargs: Any) -> nn.Module:
        if arch in _TEST_ARCHS:
            return _TEST_ARCHS[arch](tuple(input_shape), num_classes, **kwargs)
        return real(arch, input_shape, num_classes, **kwargs)

    monkeypatch.setattr(model_registry, "build_model", build)


def _warm_bn(model: nn.Module, shape: tuple[int, ...]) -> None:
    """Give BatchNorm non-trivial running stats so eval mode really differs from train."""
    model.train()
    with torch.no_grad():
        for _ in range(3):
            model(torch.randn(16, *shape) * 2 + 0.5)


def _case(name: str) -> tuple[nn.Module, dict[str, Any], tuple[int, ...]]:
    torch.manual_seed(0)
    if name == "mlp":
        shape = (6,)
        model: nn.Module = TinyMLP(6, 3, hidden=16)
        config = {"arch": "test_mlp", "kwargs": {"hidden": 16}, "input_shape": list(shape)}
    elif name == "convbn":
        shape = (2, 6, 6)
        model = TinyConvBN(2, 3, width=4)
        _warm_bn(model, shape)
        config = {"arch": "test_convbn", "kwargs": {"width": 4}, "input_shape": list(shape)}
    else:  # the real zoo MLP, when the zoo is importable
        shape = (2, 4)
        try:
            model = model_registry.build_model("mlp", shape, 3, hidden=[8])
        except (ImportError, KeyError, ValueError) as exc:
            pytest.skip(f"zoo mlp unavailable: {exc}")
        config = {"arch": "mlp", "kwargs": {"hidden": [8]}, "input_shape": list(shape)}
    config["num_classes"] = 3
    config["normalization"] = {"mean": [0.1], "std": [2.0]}  # extra key must survive
    return model, config, shape


@pytest.mark.parametrize("name", ["mlp", "convbn", "zoo_mlp"])
def test_round_trip_all_formats(tmp_path: Path, name: str) -> None:
    model, config, shape = _case(name)
    model.train()  # exporting must not leave the caller's model in eval mode
    before = {k: v.clone() for k, v in model.state_dict().items()}
    example = torch.randn(4, *shape)

    artifacts = export_student(model, ALL_FORMATS, tmp_path, example, config)

    assert model.training and all(m.training for m in model.modules())
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), f"{k} changed during export"
    assert [a.format for a in artifacts] == ALL_FORMATS
    for a in artifacts:
        assert isinstance(a, Artifact)
        assert a.path.is_file() and a.path.parent == tmp_path
        assert a.sha256 == hashlib.sha256(a.path.read_bytes()).hexdigest()
        assert a.size_bytes == a.path.stat().st_size > 0
        assert 0.0 <= a.max_abs_diff <= TOLERANCE
        d = a.to_dict()
        assert d["path"] == str(a.path) and d["format"] == a.format
        json.dumps(d)  # JSON-ready for the store

    eager = model.eval()
    x7 = torch.randn(7, *shape)
    with torch.no_grad():
        want = eager(x7)
    paths = {a.format: a.path for a in artifacts}

    sess = ort.InferenceSession(str(paths["onnx"]), providers=["CPUExecutionProvider"])
    assert [i.name for i in sess.get_inputs()] == ["input"]
    assert [o.name for o in sess.get_outputs()] == ["logits"]
    (got,) = sess.run(None, {"input": x7.numpy()})
    np.testing.assert_allclose(got, want.numpy(), atol=TOLERANCE, rtol=0)

    scripted = torch.jit.load(str(paths["torchscript"]))
    with torch.no_grad():
        torch.testing.assert_close(scripted(x7), want, atol=TOLERANCE, rtol=0)

    program = torch.export.load(str(paths["torch_export"])).module()
    with torch.no_grad():
        torch.testing.assert_close(program(x7), want, atol=TOLERANCE, rtol=0)
        torch.testing.assert_close(program(x7[:3]), want[:3], atol=TOLERANCE, rtol=0)

    config_path = tmp_path / "student.json"
    assert json.loads(config_path.read_text()) == config
    rebuilt = load_safetensors_student(paths["safetensors"], config_path)
    assert not rebuilt.training
    with torch.no_grad():
        torch.testing.assert_close(rebuilt(x7), want, atol=TOLERANCE, rtol=0)


def test_single_row_example_is_widened(tmp_path: Path) -> None:
    model, config, shape = _case("mlp")
    arts = export_student(model, ["torch_export", "onnx"], tmp_path, torch.randn(1, *shape), config)
    assert all(a.max_abs_diff <= TOLERANCE for a in arts)


def test_perturbed_reload_raises(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    model, config, shape = _case("mlp")
    example = torch.randn(4, *shape)
    real_loader = export._LOADERS["torchscript"]

    def off_by(delta: float) -> Callable[[Path], Callable[[Tensor], Tensor]]:
        def load(path: Path) -> Callable[[Tensor], Tensor]:
            loaded = real_loader(path)
            return lambda x: loaded(x) + delta

        return load

    # Just inside the tolerance passes, so the check is not trivially failing...
    monkeypatch.setitem(export._LOADERS, "torchscript", off_by(TOLERANCE / 2))
    (art,) = export_student(model, ["torchscript"], tmp_path, example, config)
    assert TOLERANCE / 4 < art.max_abs_diff <= TOLERANCE

    # ...and just outside it fails, naming the format and the difference.
    monkeypatch.setitem(export._LOADERS, "torchscript", off_by(TOLERANCE * 3))
    with pytest.raises(ExportError, match=r"torchscript.*differ.*0\.0003"):
        export_student(model, ["torchscript"], tmp_path, example, config)


def test_perturbed_safetensors_weights_raise(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    model, config, shape = _case("convbn")
    real_loader = export._LOADERS["safetensors"]

    def drifted(path: Path) -> nn.Module:
        rebuilt = real_loader(path)
        with torch.no_grad():
            rebuilt.bn.running_mean += 0.5  # a buffer lost in transit
        return rebuilt

    monkeypatch.setitem(export._LOADERS, "safetensors", drifted)
    with pytest.raises(ExportError, match="safetensors"):
        export_student(model, ["safetensors"], tmp_path, torch.randn(4, *shape), config)


def test_loader_crash_is_export_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    model, config, shape = _case("mlp")

    def broken(path: Path) -> nn.Module:
        raise OSError("truncated file")

    monkeypatch.setitem(export._LOADERS, "onnx", broken)
    with pytest.raises(ExportError, match=r"onnx.*truncated file"):
        export_student(model, ["onnx"], tmp_path, torch.randn(4, *shape), config)


def test_batch_size_baked_into_trace_is_caught(tmp_path: Path) -> None:
    """A real failure, no monkeypatching: the traced file only works at one batch size."""
    torch.manual_seed(0)
    with pytest.raises(ExportError, match="torchscript"):
        export_student(BatchBaked(), ["torchscript"], tmp_path, torch.randn(4, 6), {})


def test_unknown_format(tmp_path: Path) -> None:
    model, config, shape = _case("mlp")
    with pytest.raises(ValueError, match="tflite") as info:
        export_student(model, ["onnx", "tflite"], tmp_path, torch.randn(2, *shape), config)
    for known in KNOWN_FORMATS:
        assert known in str(info.value)
    assert not list(tmp_path.iterdir())  # nothing written before validation


def test_safetensors_needs_config_keys(tmp_path: Path) -> None:
    model, _, shape = _case("mlp")
    with pytest.raises(ValueError, match="arch"):
        export_student(model, ["safetensors"], tmp_path, torch.randn(2, *shape), {})


def test_strict_load_rejects_mismatched_config(tmp_path: Path) -> None:
    model, config, shape = _case("mlp")
    (art,) = export_student(model, ["safetensors"], tmp_path, torch.randn(2, *shape), config)
    config_path = tmp_path / "student.json"
    config_path.write_text(json.dumps({**config, "kwargs": {"hidden": 32}}))
    with pytest.raises(RuntimeError, match="size mismatch"):
        load_safetensors_student(art.path, config_path)


class Uncopyable(TinyConvBN):
    def __deepcopy__(self, memo: dict) -> Uncopyable:
        raise TypeError("cannot deepcopy this student")


def test_uncopyable_model_is_exported_in_place_and_restored(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = Uncopyable(2, 3, width=4)
    _warm_bn(model, (2, 6, 6))
    model.bn.eval()  # a deliberately frozen submodule keeps its own mode
    modes = [m.training for m in model.modules()]
    (art,) = export_student(model, ["onnx"], tmp_path, torch.randn(4, 2, 6, 6), {})
    assert art.max_abs_diff <= TOLERANCE
    assert [m.training for m in model.modules()] == modes
