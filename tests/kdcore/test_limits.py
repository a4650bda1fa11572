"""Size limits (issue #11, item 6): every size in the spec is bounded, and the models a job
builds are estimated on the meta device (no memory) and held to a budget: at submit when the
data's shape is known from the spec, in the pipeline before any training otherwise."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml
from typer.testing import CliRunner

from client.cli import app
from kdcore.callbacks import Callbacks
from kdcore.errors import InputError
from kdcore.pipeline import run
from kdcore.spec import SpecError
from kdcore.validation import parse_spec

SYNTHETIC = {"input_shape": [8], "num_classes": 3, "n_train": 64, "n_val": 32}


def spec(**sections: Any) -> dict[str, Any]:
    d: dict[str, Any] = {
        "name": "limits",
        "teacher": {"arch": "mlp", "kwargs": {"hidden": [16]}, "train": {"epochs": 1}},
        "student": {"arch": "mlp", "kwargs": {"hidden": [4]}},
        "data": {"source": "synthetic", "synthetic": dict(SYNTHETIC)},
        "train": {"epochs": 1, "batch_size": 16},
        "evaluate": {"latency_runs": 1, "latency_batch_size": 4},
        "export": ["safetensors"],
    }
    d.update(sections)
    return d


def synthetic(**changes: Any) -> dict[str, Any]:
    return {"source": "synthetic", "synthetic": {**SYNTHETIC, **changes}}


EXAMPLES = [
    ({"student": {"arch": "mlp", "kwargs": {"hidden": [100000, 100000]}}}, "student.kwargs"),
    ({"data": synthetic(n_train=1e9)}, "data.synthetic.n_train"),
    ({"data": synthetic(input_shape=[100000, 100000])}, "data.synthetic.input_shape.0"),
    ({"data": synthetic(num_classes=1e9)}, "data.synthetic.num_classes"),
    ({"evaluate": {"latency_batch_size": 1e9}}, "evaluate.latency_batch_size"),
]


def limits(**values: int) -> Any:
    """A budget (imported here, so the tests of the issue's examples run without it)."""
    from kdcore.limits import Limits

    return Limits(**values)


def errors_of(data: dict[str, Any], budget: Any = None) -> dict[str, str]:
    with pytest.raises(SpecError) as info:
        parse_spec(data) if budget is None else parse_spec(data, budget)
    return dict(info.value.errors)


@pytest.mark.parametrize(("sections", "field"), EXAMPLES)
def test_the_issues_examples_are_refused_naming_the_field(
    sections: dict[str, Any], field: str
) -> None:
    assert field in errors_of(spec(**sections))


@pytest.mark.parametrize(("sections", "field"), EXAMPLES)
def test_distill_validate_exits_2_on_each_example(
    tmp_path: Path, sections: dict[str, Any], field: str
) -> None:
    path = tmp_path / "spec.yaml"
    path.write_text(yaml.safe_dump(spec(**sections)))
    result = CliRunner().invoke(app, ["validate", str(path)])
    assert result.exit_code == 2, result.output
    assert field in result.output


def test_the_params_message_names_the_count_and_the_limit() -> None:
    big = {"arch": "mlp", "kwargs": {"hidden": [100000, 100000]}}
    msg = errors_of(spec(student=big))["student.kwargs"]
    assert "10,001,300,003 parameters" in msg and "2,000,000,000" in msg
    assert "max_model_params" in msg


def test_every_model_of_the_spec_is_held_to_the_budget() -> None:
    budget = limits(max_model_params=300)  # the student (~50 params) fits, the others do not
    big = {"arch": "mlp", "kwargs": {"hidden": [64]}}
    errors = errors_of(
        spec(
            teacher=None,
            teachers=[{**big, "train": {"epochs": 1}}, {**big, "train": {"epochs": 1}}],
            assistants=[big],
        ),
        budget,
    )
    assert set(errors) == {"teachers.0.kwargs", "teachers.1.kwargs", "assistants.0.kwargs"}


def test_peers_count_against_the_budget() -> None:
    """DML trains `peers` students at once: the trainee's estimate is the student's times K."""
    student = {"arch": "mlp", "kwargs": {"hidden": [100]}}
    one = 8 * 100 + 100 + 100 * 3 + 3
    budget = limits(max_model_params=3 * one)
    parse_spec(spec(student=student, method={"name": "dml", "peers": 3}), budget)
    errors = errors_of(spec(student=student, method={"name": "dml", "peers": 4}), budget)
    assert "student.kwargs" in errors and "×4" in errors["student.kwargs"]


def test_memory_over_budget_at_batch_one_names_the_model() -> None:
    wide = {"arch": "mlp", "kwargs": {"hidden": [4096, 256]}}  # ~1.1M params: 17 MiB to train
    errors = errors_of(spec(student=wide), limits(max_training_memory_bytes=1024**2))
    assert "student.kwargs" in errors and "1.0 MiB" in errors["student.kwargs"]


def test_a_bad_kwarg_is_refused_at_submit() -> None:
    errors = errors_of(spec(student={"arch": "mlp", "kwargs": {"hidden": [0]}}))
    assert "positive integers" in errors["student.kwargs"]


def test_an_architecture_too_deep_to_check_is_refused_quickly() -> None:
    """A ViT a million blocks deep would take minutes to even build on the meta device: the
    build is stopped early and the kwargs named."""
    errors = errors_of(spec(data=synthetic(input_shape=[1, 8, 8]), student={
        "arch": "vit_tiny", "kwargs": {"depth": 1_000_000}
    }))  # fmt: skip
    assert "layers" in errors["student.kwargs"]


# --- in the pipeline, when the shape comes from a file ---------------------------------------


class Stages(Callbacks):
    def __init__(self) -> None:
        self.started: list[str] = []

    def on_stage_start(self, stage: str, epochs: int, steps_per_epoch: int) -> None:
        self.started.append(stage)


def test_a_file_whose_shape_makes_a_model_too_big_fails_before_training(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(64, 3, 32, 32)).astype(np.float32)
    np.savez(tmp_path / "d.npz", x_train=x, y_train=np.arange(64) % 3)
    s = parse_spec(spec(data={"source": str(tmp_path / "d.npz")}))
    stages = Stages()
    # the student sees 3072 inputs: 12k parameters; the teacher 49k
    with pytest.raises(InputError) as info:
        run(s, tmp_path / "out", callbacks=stages, limits=limits(max_model_params=20_000))
    assert info.value.field == "teacher.kwargs"
    assert "20,000" in info.value.message
    assert stages.started == []


def test_the_default_limits_let_a_real_job_through(tmp_path: Path) -> None:
    s = parse_spec(spec())
    report = run(s, tmp_path / "out")
    assert report.student.params > 0
