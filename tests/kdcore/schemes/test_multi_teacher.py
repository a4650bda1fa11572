"""Several teachers: averaged soft targets, weights, a seeded random draw per step, and whole
jobs through `kdcore.pipeline.run`."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch
from torch import nn

from kdcore.checkpoint import FolderCheckpoints
from kdcore.data import load_data
from kdcore.methods import registry as methods
from kdcore.methods.base import StepOutputs
from kdcore.models.registry import build_model
from kdcore.pipeline import run
from kdcore.schemes.multi_teacher import TeacherEnsemble
from kdcore.spec import DataSpec, SpecError, TrainSpec
from kdcore.train import StageContext, Teaching, fit
from kdcore.validation import parse_spec

from ._helpers import STUDENT, TEACHER, assert_student_loads_back, job


def _mlp(seed: int, hidden: int = 16) -> nn.Module:
    torch.manual_seed(seed)
    return build_model("mlp", (8, 8), 10, hidden=[hidden])


def test_average_of_identical_teachers_is_that_teacher_at_temperature() -> None:
    t = _mlp(0)
    x = torch.randn(5, 8, 8)
    ens = TeacherEnsemble([t, copy.deepcopy(t)], [1.0, 3.0], ["eval", "eval"], temperature=4.0)
    with torch.no_grad():
        want, got = t(x), ens(x)
    assert torch.allclose(torch.softmax(got / 4, 1), torch.softmax(want / 4, 1), atol=1e-6)
    kd = methods.build("kd", {"temperature": 4.0})
    s = torch.randn(5, 10)
    y = torch.randint(0, 10, (5,))
    assert kd(StepOutputs(s, y, got)).item() == pytest.approx(
        kd(StepOutputs(s, y, want)).item(), abs=1e-5
    )


def test_average_weighs_probabilities() -> None:
    a, b = _mlp(0), _mlp(1)
    x = torch.randn(6, 8, 8)
    ens = TeacherEnsemble([a, b], [1.0, 3.0], ["eval", "eval"], temperature=2.0)
    with torch.no_grad():
        p = 0.25 * torch.softmax(a(x) / 2, 1) + 0.75 * torch.softmax(b(x) / 2, 1)
        got = torch.softmax(ens(x) / 2, 1)
    assert torch.allclose(got, p, atol=1e-6)


def test_random_draw_is_seeded_weighted_and_independent_of_history() -> None:
    ens = TeacherEnsemble([_mlp(0), _mlp(1)], [1.0, 3.0], ["eval", "eval"], combine="random")
    draws = [ens.draw(e, s) for e in (1, 2) for s in range(200)]
    again = TeacherEnsemble([_mlp(0), _mlp(1)], [1.0, 3.0], ["eval", "eval"], combine="random")
    assert [again.draw(e, s) for e in (1, 2) for s in range(200)] == draws
    assert 0.65 < sum(draws) / len(draws) < 0.85  # teacher 1 drawn ~3/4 of the time
    other = TeacherEnsemble([_mlp(0), _mlp(1)], [1, 3], ["eval"] * 2, combine="random", seed=1)
    assert [other.draw(e, s) for e in (1, 2) for s in range(200)] != draws
    x = torch.randn(3, 8, 8)
    ens.start_step(1, 7)
    with torch.no_grad():
        assert torch.equal(ens(x), ens.members[ens.draw(1, 7)](x))


def test_random_scheme_resumes_to_the_same_weights(tmp_path: Path) -> None:
    data = load_data(DataSpec(source="digits"))

    def train(epochs: int, store: FolderCheckpoints) -> nn.Module:
        ens = TeacherEnsemble([_mlp(0), _mlp(1)], [1, 1], ["eval"] * 2, combine="random")
        student = _mlp(5, hidden=8)
        spec = TrainSpec(epochs=epochs, batch_size=128)
        fit(
            student,
            methods.build("kd"),
            StageContext(
                name="d",
                data=data,
                train=spec,
                teacher=Teaching(ens, cache=False),
                checkpoints=store,
            ),
        )
        return student

    full = train(2, FolderCheckpoints(tmp_path / "a"))
    store = FolderCheckpoints(tmp_path / "b")
    train(1, store)
    resumed = train(2, store)
    for k, v in full.state_dict().items():
        assert torch.equal(v, resumed.state_dict()[k])


def test_two_identical_teachers_equal_one_teacher_through_the_pipeline(tmp_path: Path) -> None:
    single = run(parse_spec(job("one")), tmp_path / "one").to_json()
    spec = parse_spec(job("two", teacher=None, teachers=[TEACHER, {**TEACHER, "weight": 2.0}]))
    double = run(spec, tmp_path / "two").to_json()
    assert double["student"]["accuracy"] == pytest.approx(single["student"]["accuracy"], abs=0.3)
    assert double["history"][0]["train_loss"] == pytest.approx(
        single["history"][0]["train_loss"], rel=1e-4
    )
    t = double["teacher"]
    assert [m["weight"] for m in t["members"]] == [1.0, 2.0]
    assert t["members"][0]["accuracy"] == t["members"][1]["accuracy"] == t["accuracy"]
    assert t["ensemble_accuracy"] == pytest.approx(t["accuracy"], abs=0.3)
    assert double["gap"] == pytest.approx(t["accuracy"] - double["student"]["accuracy"], abs=1e-3)
    assert_student_loads_back(spec, tmp_path / "two", double)


def test_random_multi_teacher_job_with_feature_teacher(tmp_path: Path) -> None:
    small = {**TEACHER, "kwargs": {"channels": [4, 8]}}
    spec = parse_spec(
        job(
            "rand",
            teacher=None,
            teachers=[small, {**TEACHER, "mode": "train"}],
            multi_teacher={"combine": "random", "feature_teacher": 1},
            student={"arch": "convnet", "kwargs": {"channels": [4, 8]}},
            method={
                "name": "combined",
                "terms": [
                    {"name": "kd"},
                    {"name": "at", "student_layers": ["block2"], "teacher_layers": ["block2"]},
                ],
            },
        )
    )
    report = run(spec, tmp_path).to_json()
    best = report["teacher"]["best"]
    members = report["teacher"]["members"]
    assert report["teacher"]["accuracy"] == max(m["accuracy"] for m in members)
    assert members[best]["accuracy"] == report["teacher"]["accuracy"]
    assert report["teacher"]["ensemble_accuracy"] is None and report["teacher_cache"] is False
    assert [m["history"][0]["stage"] for m in members] == ["teacher1", "teacher2"]
    assert_student_loads_back(spec, tmp_path, report)


@pytest.mark.parametrize(
    ("over", "loc"),
    [
        ({"teachers": [TEACHER]}, "teachers"),  # both teacher and teachers
        ({"multi_teacher": {"combine": "average"}}, "multi_teacher"),
        (
            {"teacher": None, "teachers": [TEACHER], "multi_teacher": {"feature_teacher": 3}},
            "multi_teacher.feature_teacher",
        ),
        ({"teacher": None, "teachers": [{**TEACHER, "weight": 0}]}, "teachers.0.weight"),
        ({"teacher": None, "teachers": [{**TEACHER, "wieght": 1}]}, "teachers.0.wieght"),
        ({"teacher": None, "teachers": [{**TEACHER, "arch": "nope"}]}, "teachers.0.arch"),
        ({"teacher": None, "teachers": []}, "teachers"),
        (
            {"teacher": None, "teachers": [TEACHER], "multi_teacher": {"combine": "vote"}},
            "multi_teacher.combine",
        ),
        ({"teacher": None}, "teacher"),
    ],
)
def test_spec_errors_name_the_field(over: dict, loc: str) -> None:
    with pytest.raises(SpecError) as info:
        parse_spec(job("bad", **over))
    assert loc in [e[0] for e in info.value.errors], info.value.errors


def test_teachers_file_paths_are_listed_and_replaced() -> None:
    from kdcore.spec import file_references, with_files

    spec = parse_spec(
        job(
            "f",
            teacher=None,
            teachers=[{"torchscript": "a.pt"}, {"onnx": "b.onnx"}],
            student=STUDENT,
        )
    )
    assert [r[:2] for r in file_references(spec)] == [
        ("teachers.0.torchscript", "a.pt"),
        ("teachers.1.onnx", "b.onnx"),
    ]
    moved = with_files(spec, {"teachers.1.onnx": "/x/b.onnx"})
    assert moved.teachers is not None and moved.teachers[1].onnx == "/x/b.onnx"


def test_multi_teacher_through_distill_run(tmp_path: Path) -> None:
    import yaml
    from typer.testing import CliRunner

    from client.cli import app

    spec = job("cli-multi", teacher=None, teachers=[TEACHER, {**TEACHER, "weight": 3}])
    path = tmp_path / "spec.yaml"
    path.write_text(yaml.safe_dump(spec))
    result = CliRunner().invoke(app, ["run", str(path), "--out", str(tmp_path / "o")])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "o" / "student.safetensors").exists()


def test_multi_teacher_example_is_a_valid_spec() -> None:
    from kdcore.validation import load_spec

    examples = Path(__file__).resolve().parents[3] / "examples"
    spec = load_spec(examples / "digits-multi-teacher.yaml")
    assert spec.teachers is not None and len(spec.teachers) == 2
