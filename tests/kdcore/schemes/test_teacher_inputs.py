"""A teacher given as a file receives the inputs it was trained on (`teacher.inputs`, default
raw), and a teacher that cannot teach (near chance, or far below `teacher.expected_accuracy`)
stops the job before the distill stage trains."""

from __future__ import annotations

from functools import cache
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

from kdcore.data import load_data
from kdcore.errors import InputError
from kdcore.evaluate import accuracy
from kdcore.models.inputs import RawInputs
from kdcore.models.registry import build_model
from kdcore.pipeline import run
from kdcore.spec import DataSpec, SpecError
from kdcore.validation import parse_spec

from ._helpers import Stages, job

HIDDEN = [32]


@cache
def _raw_teacher(steps: int = 150) -> tuple[dict[str, torch.Tensor], float]:
    """An MLP trained (`steps` full-batch steps) on the digits as the data holds them, not
    standardised, and its accuracy on that evaluation split (150 steps: about 95 %, and about
    75 % when fed the standardised data)."""
    data = load_data(DataSpec(source="digits", normalize=False))
    torch.manual_seed(0)
    model = build_model("mlp", data.input_shape, data.num_classes, hidden=HIDDEN)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    for _ in range(steps):
        opt.zero_grad()
        nn.functional.cross_entropy(model(data.x_train), data.y_train).backward()
        opt.step()
    model.eval()
    return model.state_dict(), accuracy(model, data.x_val, data.y_val)


def _model(state: dict[str, torch.Tensor] | None = None) -> nn.Module:
    torch.manual_seed(1)
    model = build_model("mlp", (1, 8, 8), 10, hidden=HIDDEN)
    if state is not None:
        model.load_state_dict(state)
    return model.eval()


def _files(tmp_path: Path, model: nn.Module) -> dict[str, dict[str, Any]]:
    ts, sd = tmp_path / "teacher.ts.pt", tmp_path / "teacher.pt"
    torch.jit.save(torch.jit.trace(model, torch.randn(2, 1, 8, 8)), str(ts))
    torch.save(model.state_dict(), sd)
    return {
        "torchscript": {"torchscript": str(ts)},
        "checkpoint": {"arch": "mlp", "kwargs": {"hidden": HIDDEN}, "checkpoint": str(sd)},
    }


def _run(tmp_path: Path, teacher: dict[str, Any], **over: Any) -> tuple[dict[str, Any], Stages]:
    spec = parse_spec(job("inputs", teacher=teacher, **over))
    stages = Stages()
    report = run(spec, tmp_path / "out", stages).to_json()
    return report, stages


@pytest.mark.parametrize("source", ["torchscript", "checkpoint"])
def test_a_teacher_file_keeps_its_own_accuracy_on_normalized_data(
    source: str, tmp_path: Path
) -> None:
    state, own = _raw_teacher()
    assert own > 90
    teacher = _files(tmp_path, _model(state))[source]
    report, _ = _run(tmp_path, teacher)  # data.normalize defaults to true
    assert report["teacher"]["accuracy"] == pytest.approx(own, abs=1e-3)
    assert report["teacher"]["params"] == sum(p.numel() for p in _model().parameters())
    # the student's normalisation is the student's: student.json records the data's
    config = (tmp_path / "out" / "student.json").read_text()
    assert '"normalization"' in config and '"mean"' in config


def test_inputs_normalized_feeds_the_standardised_data(tmp_path: Path) -> None:
    state, own = _raw_teacher()
    teacher = {**_files(tmp_path, _model(state))["torchscript"], "inputs": "normalized"}
    data = load_data(DataSpec(source="digits"))
    want = accuracy(_model(state), data.x_val, data.y_val)  # what it scored before item 4
    assert want < own - 1
    report, _ = _run(tmp_path, teacher)
    assert report["teacher"]["accuracy"] == pytest.approx(want, abs=1e-3)


def test_a_random_teacher_file_stops_the_job_before_distilling(tmp_path: Path) -> None:
    teacher = _files(tmp_path, _model())["torchscript"]  # random weights
    data = load_data(DataSpec(source="digits"))
    assert data.normalization is not None
    wrapped = RawInputs(_model(), data.normalization, data.input_shape)
    assert accuracy(wrapped, data.x_val, data.y_val) < 15  # about chance
    with pytest.raises(InputError) as err:
        _run(tmp_path, teacher)
    assert err.value.field == "teacher"
    assert "chance" in err.value.message and "teacher.inputs: normalized" in err.value.message
    assert "class" in err.value.message and "other data" in err.value.message


def test_the_check_runs_before_the_distill_stage_trains(tmp_path: Path) -> None:
    teacher = _files(tmp_path, _model())["torchscript"]
    spec = parse_spec(job("inputs", teacher=teacher))
    stages = Stages()
    with pytest.raises(InputError):
        run(spec, tmp_path / "out", stages)
    assert "distill" not in stages.started and stages.trained == []


def test_expected_accuracy_far_above_the_real_one_stops_the_job(tmp_path: Path) -> None:
    state, own = _raw_teacher(20)  # a weak teacher, far above chance
    assert 40 < own < 85
    teacher = {**_files(tmp_path, _model(state))["checkpoint"], "expected_accuracy": own + 15}
    spec = parse_spec(job("inputs", teacher=teacher))
    stages = Stages()
    with pytest.raises(InputError) as err:
        run(spec, tmp_path / "out", stages)
    assert err.value.field == "teacher" and "teacher.expected_accuracy" in err.value.message
    assert "distill" not in stages.started
    # within 10 points it runs
    report, _ = _run(tmp_path, {**teacher, "expected_accuracy": own + 5})
    assert report["teacher"]["accuracy"] == pytest.approx(own, abs=1e-3)


def test_expected_accuracy_applies_to_a_teacher_trained_in_the_job(tmp_path: Path) -> None:
    teacher = {"arch": "mlp", "kwargs": {"hidden": [4]}, "train": {"epochs": 1}}
    with pytest.raises(InputError) as err:
        _run(tmp_path, {**teacher, "expected_accuracy": 100})
    assert err.value.field == "teacher" and "Trained in the job" in err.value.message


def test_feature_methods_hook_the_wrapped_teacher_by_its_layer_names(tmp_path: Path) -> None:
    state, own = _raw_teacher()
    teacher = _files(tmp_path, _model(state))["checkpoint"]
    method = {"name": "fitnets", "teacher_layers": ["act1"], "student_layers": ["act1"]}
    report, stages = _run(tmp_path, teacher, method=method)
    assert report["teacher"]["accuracy"] == pytest.approx(own, abs=1e-3)
    assert "distill" in stages.trained
    with pytest.raises(InputError, match="no module named 'nope'"):
        _run(tmp_path, teacher, method={**method, "teacher_layers": ["nope"]})


def test_multi_teacher_entries_get_their_inputs(tmp_path: Path) -> None:
    state, own = _raw_teacher()
    files = _files(tmp_path, _model(state))
    teachers = [files["torchscript"], {**files["checkpoint"], "inputs": "normalized"}]
    report, _ = _run(tmp_path, None, teachers=teachers)
    members = report["teacher"]["members"]
    assert members[0]["accuracy"] == pytest.approx(own, abs=1e-3)
    assert members[1]["accuracy"] < own - 1
    with pytest.raises(InputError) as err:
        _run(tmp_path, None, teachers=[files["torchscript"], _random_file(tmp_path)])
    assert err.value.field == "teachers.1"


def _random_file(tmp_path: Path) -> dict[str, Any]:
    folder = tmp_path / "random"
    folder.mkdir(exist_ok=True)
    return _files(folder, _model())["torchscript"]


def test_a_teacher_trained_in_the_job_cannot_take_raw_inputs() -> None:
    teacher = {"arch": "mlp", "train": {"epochs": 1}, "inputs": "raw"}
    with pytest.raises(SpecError) as err:
        parse_spec(job("inputs", teacher=teacher))
    assert any(loc == "teacher" and "inputs" in msg for loc, msg in err.value.errors)
