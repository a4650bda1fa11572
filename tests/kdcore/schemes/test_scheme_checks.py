"""Every check that needs no model runs at submit (`parse_spec`): each scheme's conflicts are
`SpecError`s naming the field, before any training; `distill validate` and `distill run` exit 2
on them. The plan a worker weighs progress with is the plan the pipeline runs."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml
from typer.testing import CliRunner

from client.cli import app
from kdcore.schemes import registry
from kdcore.spec import SpecError
from kdcore.validation import parse_spec

from ._helpers import job

GPD_SCRATCH = {"name": "gpd", "scenario": "scratch", "ratio": 2}
NO_TEACHER = {"teacher": None}

# (spec overrides, the field the error must name, words of the fix)
CONFLICTS: list[tuple[dict[str, Any], str, str]] = [
    (
        {**NO_TEACHER, "method": {"name": "gpd", "scenario": "finetune"}},
        "student.checkpoint",
        "scenario finetune starts from a trained student",
    ),
    ({"method": {"name": "dml"}, "assistants": [{"arch": "mlp"}]}, "assistants", "remove"),
    ({**NO_TEACHER, "method": GPD_SCRATCH, "generations": 2}, "generations", "use 1"),
    ({"method": {"name": "dml"}, "generations": 3}, "generations", "use 1"),
    (
        {**NO_TEACHER, "method": GPD_SCRATCH, "assistants": [{"arch": "mlp"}]},
        "assistants",
        "remove",
    ),
    (
        {**NO_TEACHER, "method": GPD_SCRATCH, "student": {"arch": "mlp", "output": 0}},
        "student.output",
        "logits",
    ),
]


@pytest.mark.parametrize(("over", "field", "words"), CONFLICTS)
def test_scheme_conflicts_are_spec_errors(over: dict[str, Any], field: str, words: str) -> None:
    with pytest.raises(SpecError) as exc:
        parse_spec(job("conflict", **over))
    assert [loc for loc, _ in exc.value.errors] == [field]
    assert words in exc.value.errors[0][1]


@pytest.mark.parametrize(("over", "field", "words"), CONFLICTS[:3])
@pytest.mark.parametrize("command", ["validate", "run"])
def test_the_cli_exits_2_before_training(
    tmp_path: Path, command: str, over: dict[str, Any], field: str, words: str
) -> None:
    path = tmp_path / "spec.yaml"
    path.write_text(yaml.safe_dump(job("conflict", **over)))
    args = [command, str(path)] + (
        ["--out", str(tmp_path / "out"), "-q"] if command == "run" else []
    )
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 2, result.output
    assert field in result.output
    assert not (tmp_path / "out" / "checkpoints").exists()  # nothing trained


def test_an_unknown_method_is_reported_once_without_scheme_checks() -> None:
    with pytest.raises(SpecError) as exc:
        parse_spec(job("x", method={"name": "nope"}, generations=2))
    assert [loc for loc, _ in exc.value.errors] == ["method.name"]


def test_exactly_one_student_scheme_applies_per_method() -> None:
    cases = {"kd": "offline", "dkd": "offline", "tf_kd": "self", "ce": "self", "dml": "dml"}
    for method, scheme in cases.items():
        spec = parse_spec(job("m", method={"name": method}))
        students = [s.name for s in registry.active(spec) if s.order == 40]
        assert students == [scheme], method
    gpd = parse_spec(job("g", teacher=None, method=GPD_SCRATCH))
    assert [s.name for s in registry.active(gpd)] == ["gpd"]


def test_the_plan_lists_every_stage_in_running_order() -> None:
    spec = parse_spec(
        job(
            "plan",
            evaluate={"baseline": True},
            assistants=[{"arch": "mlp"}, {"arch": "mlp"}],
            generations=3,
        )
    )
    assert [s.name for s in registry.plan(spec)] == [
        "teacher",
        "baseline",
        "assistant1",
        "assistant2",
        "distill",
        "generation2",
        "generation3",
    ]
    loaded = parse_spec(job("plan", teacher={"onnx": "upload:abc"}))
    assert [(s.name, s.epochs) for s in registry.plan(loaded)] == [("teacher", 0), ("distill", 1)]


def test_every_registered_scheme_has_its_own_file() -> None:
    assert registry.names() == [
        "baseline",
        "born_again",
        "dml",
        "gpd",
        "multi_teacher",
        "offline",
        "self",
        "teacher",
        "teacher_assistant",
    ]
