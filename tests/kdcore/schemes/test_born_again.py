"""Born-again generations through `kdcore.pipeline.run`: the chain, its report, resuming it
with more generations, and its errors."""

from __future__ import annotations

from pathlib import Path

import pytest

from kdcore.checkpoint import FolderCheckpoints
from kdcore.errors import InputError
from kdcore.pipeline import run
from kdcore.spec import SpecError
from kdcore.validation import parse_spec

from ._helpers import Stages, assert_student_loads_back, job


def test_generations_run_report_export_and_extend_from_checkpoints(tmp_path: Path) -> None:
    store = FolderCheckpoints(tmp_path / "ckpt")
    stages = Stages()
    spec = parse_spec(job("ban", generations=2))
    report = run(spec, tmp_path / "a", callbacks=stages, checkpoints=store).to_json()
    assert stages.trained == ["teacher", "distill", "generation2", "evaluate", "export"]
    gens = report["generations"]
    assert [g["generation"] for g in gens] == [1, 2]
    assert gens[0]["history"][0]["stage"] == "distill"
    assert gens[1]["history"][0]["stage"] == "generation2"
    assert gens[-1]["accuracy"] == report["student"]["accuracy"]
    assert gens[-1]["best_accuracy"] == report["student"]["best_accuracy"]
    assert [h["stage"] for h in report["history"]] == ["distill", "generation2"]
    assert_student_loads_back(spec, tmp_path / "a", report)

    # One more generation on the same checkpoints trains only the new one.
    more = Stages()
    third = run(parse_spec(job("ban", generations=3)), tmp_path / "b", more, store).to_json()
    assert more.trained == ["generation3", "evaluate", "export"]
    assert [g["accuracy"] for g in third["generations"][:2]] == [g["accuracy"] for g in gens]


def test_one_generation_is_plain_distillation(tmp_path: Path) -> None:
    report = run(parse_spec(job("kd")), tmp_path).to_json()
    assert parse_spec(job("kd")).generations == 1
    assert [g["generation"] for g in report["generations"]] == [1]
    assert report["generations"][0]["accuracy"] == report["student"]["accuracy"]


def test_generations_must_be_at_least_one() -> None:
    with pytest.raises(SpecError) as exc:
        parse_spec(job("ban", generations=0))
    assert exc.value.errors[0][0] == "generations"


def test_feature_method_needs_teacher_layers_on_the_student(tmp_path: Path) -> None:
    # The student (an MLP) has fc1 but no block1: fine as a student, not as the next teacher.
    method = {"name": "sp", "student_layers": ["fc1"], "teacher_layers": ["block1"]}
    with pytest.raises(InputError) as exc:
        run(parse_spec(job("ban", generations=2, method=method)), tmp_path)
    assert exc.value.field == "generations" and "block1" in exc.value.message
