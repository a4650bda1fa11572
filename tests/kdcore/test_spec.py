"""Spec validation: every error names the field path and what is allowed."""

import json
from pathlib import Path

import pytest

from kdcore.methods import registry
from kdcore.spec import SpecError
from kdcore.validation import load_spec, parse_spec


def base() -> dict:
    return {
        "name": "t",
        "teacher": {"arch": "mlp", "train": {"epochs": 1}},
        "student": {"arch": "mlp", "kwargs": {"hidden": [8]}},
        "data": {"source": "digits"},
        "method": {"name": "kd", "temperature": 2.0},
    }


def errors_of(data: dict) -> dict[str, str]:
    with pytest.raises(SpecError) as info:
        parse_spec(data)
    return dict(info.value.errors)


def test_valid_spec_fills_defaults() -> None:
    spec = parse_spec(base())
    assert spec.train.epochs == 10 and spec.method.params().alpha == 0.9
    assert spec.teacher.source == "train"
    assert spec.export == ["torchscript", "torch_export", "onnx", "safetensors"]


def test_unknown_method_lists_known() -> None:
    d = base()
    d["method"] = {"name": "kdd"}
    known = ", ".join(registry.names())  # every registered method, in order
    assert errors_of(d) == {"method.name": f"'kdd' is not a known method; known: {known}"}


def test_bad_method_param_names_path() -> None:
    d = base()
    d["method"] = {"name": "kd", "temperature": -1, "beta": 2}
    errs = errors_of(d)
    assert "greater than 0" in errs["method.temperature"]
    assert "unknown key" in errs["method.beta"]


def test_unknown_key_and_missing_field() -> None:
    d = base()
    d["data"]["sorce"] = "x"
    del d["student"]
    errs = errors_of(d)
    assert errs["data.sorce"].startswith("unknown key")
    assert errs["student"] == "required field is missing"


def test_unknown_arch_lists_zoo() -> None:
    d = base()
    d["student"]["arch"] = "resnet9000"
    errs = errors_of(d)
    assert "'resnet9000' is not a known architecture" in errs["student.arch"]
    assert "resnet8x4" in errs["student.arch"]


@pytest.mark.parametrize(
    "teacher, fragment",
    [
        ({"arch": "mlp"}, "exactly one teacher source"),
        ({"arch": "mlp", "train": {}, "onnx": "t.onnx"}, "exactly one teacher source"),
        ({"train": {}}, "teacher.train needs teacher.arch"),
        ({"arch": "mlp", "onnx": "t.onnx"}, "remove arch"),
    ],
)
def test_teacher_sources(teacher: dict, fragment: str) -> None:
    d = base()
    d["teacher"] = teacher
    assert fragment in errors_of(d)["teacher"]


def test_bad_values_name_path() -> None:
    d = base()
    d["train"] = {"optimizer": {"name": "rmsprop"}, "epochs": 0}
    d["export"] = ["tflite"]
    errs = errors_of(d)
    assert "'sgd', 'adam' or 'adamw'" in errs["train.optimizer.name"]
    assert "greater than or equal to 1" in errs["train.epochs"]
    assert "export.0" in errs


def test_load_yaml_and_json_resolve_relative_paths(tmp_path: Path) -> None:
    d = base()
    (tmp_path / "t.onnx").write_bytes(b"x")
    d["teacher"] = {"onnx": "t.onnx"}
    (tmp_path / "s.json").write_text(json.dumps(d))
    spec = load_spec(tmp_path / "s.json")
    assert spec.teacher.onnx == str(tmp_path / "t.onnx")
    (tmp_path / "s.yaml").write_text(
        "name: y\nteacher: {onnx: t.onnx}\nstudent: {arch: mlp}\ndata: {source: digits}\n"
    )
    assert load_spec(tmp_path / "s.yaml").name == "y"


def test_load_rejects_broken_files(tmp_path: Path) -> None:
    (tmp_path / "bad.yaml").write_text("name: [unclosed\n")
    with pytest.raises(SpecError, match="not valid YAML"):
        load_spec(tmp_path / "bad.yaml")
    (tmp_path / "list.yaml").write_text("- 1\n")
    with pytest.raises(SpecError, match="a spec is a mapping"):
        load_spec(tmp_path / "list.yaml")
    with pytest.raises(SpecError, match="cannot read"):
        load_spec(tmp_path / "missing.yaml")


# --- non-finite numbers -------------------------------------------------------------------------

NOT_FINITE = [float("nan"), float("inf"), float("-inf")]


@pytest.mark.parametrize("value", NOT_FINITE, ids=["nan", "inf", "-inf"])
@pytest.mark.parametrize(
    ("path", "section"),
    [
        ("train.optimizer.lr", {"train": {"optimizer": {"lr": None}}}),
        ("train.optimizer.weight_decay", {"train": {"optimizer": {"weight_decay": None}}}),
        ("gates.max_gap", {"gates": {"max_gap": None}}),
        ("method.temperature", {"method": {"name": "kd", "temperature": None}}),
        (
            "teacher.kwargs.dropout",
            {"teacher": {"arch": "mlp", "kwargs": {"dropout": None}, "train": {"epochs": 1}}},
        ),
        ("student.kwargs.hidden.1", {"student": {"arch": "mlp", "kwargs": {"hidden": [8, None]}}}),
    ],
)
def test_non_finite_numbers_are_refused_naming_the_field(
    path: str, section: dict, value: float
) -> None:
    """NaN and ±Infinity pass `gt`/`ge` bounds unevenly (NaN compares false, inf passes `ge`)
    and break the database's JSON later: refused up front, wherever they are."""
    d = base()
    d.update(json.loads(json.dumps(section).replace("null", json.dumps(value))))
    errs = errors_of(d)
    assert path in errs, errs
    assert "finite" in errs[path], errs


def test_a_spec_model_refuses_non_finite_numbers_itself() -> None:
    from pydantic import ValidationError

    from kdcore.spec import GatesSpec, OptimizerSpec

    for bad in ("NaN", "inf", float("nan"), float("-inf")):
        with pytest.raises(ValidationError, match="finite"):
            GatesSpec(max_gap=bad)  # type: ignore[arg-type]
        with pytest.raises(ValidationError, match="finite"):
            OptimizerSpec(weight_decay=bad)  # type: ignore[arg-type]


def test_yaml_nan_and_inf_are_refused(tmp_path: Path) -> None:
    (tmp_path / "s.yaml").write_text(
        "name: y\nteacher: {arch: mlp, train: {epochs: 1}}\nstudent: {arch: mlp}\n"
        "data: {source: digits}\ntrain: {optimizer: {lr: .nan}}\ngates: {max_gap: .inf}\n"
    )
    with pytest.raises(SpecError) as info:
        load_spec(tmp_path / "s.yaml")
    errs = dict(info.value.errors)
    assert "finite" in errs["train.optimizer.lr"] and "finite" in errs["gates.max_gap"]
