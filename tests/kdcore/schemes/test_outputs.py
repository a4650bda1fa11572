"""Teachers and students whose forward returns a tuple, a dict or an object with `logits`."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import torch
from torch import Tensor, nn

from kdcore.errors import InputError
from kdcore.models import registry as zoo
from kdcore.models.outputs import LogitsOutput, select_logits, with_logits
from kdcore.pipeline import run
from kdcore.spec import SpecError
from kdcore.validation import parse_spec

from ._helpers import STUDENT, assert_student_loads_back, fit_to_digits, job

logits = torch.randn(3, 5)
feats = torch.randn(3, 7)


@pytest.mark.parametrize(
    ("out", "key"),
    [
        (logits, None),
        ((logits, feats), None),
        ([feats, logits], 1),
        ((feats, logits), -1),
        ({"logits": logits, "features": feats}, None),
        ({"out": logits, "features": feats}, "out"),
        (SimpleNamespace(logits=logits, hidden=feats), None),
        (SimpleNamespace(scores=logits), "scores"),
    ],
)
def test_select_logits(out: Any, key: Any) -> None:
    assert select_logits(out, key) is logits


@pytest.mark.parametrize(
    ("out", "key", "listed"),
    [
        ({"out": logits}, None, "keys 'out': tensor (3, 5)"),
        ((feats, logits), 2, "tuple of 2 (0: tensor (3, 7), 1: tensor (3, 5))"),
        ({"logits": logits}, "scores", "'scores' does not select a tensor"),
        (SimpleNamespace(x=1), None, "SimpleNamespace"),
    ],
)
def test_wrong_output_key_names_the_field_and_lists_the_output(
    out: Any, key: Any, listed: str
) -> None:
    with pytest.raises(InputError, match=r"teacher\.output") as info:
        select_logits(out, key, "teacher.output")
    assert listed in str(info.value)


class TupleNet(nn.Module):
    def __init__(self, n_in: int = 64, n_cls: int = 10) -> None:
        super().__init__()
        self.body = nn.Linear(n_in, 12)
        self.head = nn.Linear(12, n_cls)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        h = torch.relu(self.body(x.flatten(1)))
        return h, self.head(h)


class DictNet(TupleNet):
    def forward(self, x: Tensor) -> dict[str, Tensor]:  # type: ignore[override]
        h = torch.relu(self.body(x.flatten(1)))
        return {"features": h, "logits": self.head(h)}


def test_wrapper_is_transparent_for_weights_and_returns_the_tensor() -> None:
    net = TupleNet()
    wrapped = with_logits(net, 1, "student.output", torch.zeros(2, 64))
    assert isinstance(wrapped, LogitsOutput)
    assert set(wrapped.state_dict()) == set(net.state_dict())  # no "inner." prefix
    wrapped.load_state_dict(TupleNet().state_dict())
    x = torch.randn(4, 64)
    assert torch.equal(wrapped(x), net(x)[1])
    # A model that already returns a tensor is not wrapped.
    plain = nn.Linear(64, 10)
    assert with_logits(plain, None, "student.output", torch.zeros(2, 64)) is plain
    with pytest.raises(InputError, match=r"student\.output"):
        with_logits(TupleNet(), 5, "student.output", torch.zeros(2, 64))


def _save_scripted(model: nn.Module, path: Path) -> str:
    torch.jit.save(torch.jit.script(model.eval()), str(path))
    return str(path)


@pytest.mark.parametrize(("net", "output"), [(TupleNet, 1), (DictNet, None), (DictNet, "logits")])
def test_torchscript_teacher_with_tuple_or_dict_output_runs_a_job(
    net: type[nn.Module], output: Any, tmp_path: Path
) -> None:
    torch.manual_seed(0)
    model = fit_to_digits(net(), lambda out: select_logits(out, output))
    path = _save_scripted(model, tmp_path / "teacher.pt")
    teacher: dict[str, Any] = {"torchscript": path}
    if output is not None:
        teacher["output"] = output
    spec = parse_spec(job("ts-outputs", teacher=teacher))
    report = run(spec, tmp_path / "out").to_json()
    assert report["teacher"]["accuracy"] >= 0 and report["teacher_cache"] is True
    assert_student_loads_back(spec, tmp_path / "out", report)


def test_torchscript_teacher_tuple_without_output_uses_first_element(tmp_path: Path) -> None:
    # TupleNet returns (features, logits): the default picks the 12-wide features and the
    # shape check refuses them, naming the field; `output: 1` is the fix.
    path = _save_scripted(TupleNet(), tmp_path / "teacher.pt")
    spec = parse_spec(job("ts-default", teacher={"torchscript": path}))
    with pytest.raises(InputError, match=r"teacher\.torchscript.*\(2, 12\)"):
        run(spec, tmp_path / "out")
    spec = parse_spec(job("ts-bad", teacher={"torchscript": path, "output": "logits"}))
    with pytest.raises(InputError, match=r"teacher\.output.*tuple of 2"):
        run(spec, tmp_path / "out2")


@pytest.fixture
def dict_student(monkeypatch: pytest.MonkeyPatch) -> str:
    def factory(input_shape: tuple[int, ...], num_classes: int) -> nn.Module:
        return DictNet(int(torch.tensor(input_shape).prod()), num_classes)

    monkeypatch.setitem(zoo._zoo._items, "dict_net", factory)
    return "dict_net"


def test_student_with_dict_output_trains_exports_and_loads_back(
    dict_student: str, tmp_path: Path
) -> None:
    spec = parse_spec(
        job(
            "dict-student",
            student={"arch": dict_student, "output": "logits"},
            export=["safetensors", "torchscript", "onnx", "torch_export"],
        )
    )
    report = run(spec, tmp_path).to_json()
    assert {a["format"] for a in report["artifacts"]} == {
        "safetensors",
        "torchscript",
        "onnx",
        "torch_export",
    }
    assert_student_loads_back(spec, tmp_path, report)
    scripted = torch.jit.load(str(tmp_path / "student.torchscript.pt"))
    assert isinstance(scripted(torch.zeros(2, 8, 8)), Tensor)


def test_output_key_is_validated_as_int_or_str() -> None:
    with pytest.raises(SpecError, match=r"student\.output"):
        parse_spec(job("bad", student={**STUDENT, "output": [1]}))
