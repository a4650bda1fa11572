"""GPD's three scenarios (gpd.md §5) end to end through `distill run`, its spec rules, the
report's dynamic-teacher fields, and resume = uninterrupted."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml
from typer.testing import CliRunner

from client.cli import app
from kdcore.callbacks import Callbacks, EpochRecord
from kdcore.checkpoint import FolderCheckpoints
from kdcore.data import load_data
from kdcore.evaluate import accuracy
from kdcore.export import load_safetensors_student
from kdcore.methods import registry
from kdcore.models.registry import build_model
from kdcore.schemes.gpd import expand
from kdcore.schemes.gpd.trainee import GPDTrainee
from kdcore.spec import SpecError, TrainSpec
from kdcore.train import StageContext, fit
from kdcore.validation import load_spec, parse_spec

TEACHER = {"arch": "convnet", "kwargs": {"channels": [16, 32]}, "train": {"epochs": 1}}
STUDENT = {"arch": "convnet", "kwargs": {"channels": [4, 8]}}


def job(method: dict[str, Any], **over: Any) -> dict[str, Any]:
    spec: dict[str, Any] = {
        "name": f"gpd-{method.get('scenario', 'teacher')}",
        "teacher": TEACHER,
        "student": STUDENT,
        "data": {"source": "digits"},
        "method": {"name": "gpd", **method},
        "train": {"epochs": 2, "batch_size": 64, "optimizer": {"name": "adam", "lr": 0.003}},
        "evaluate": {"latency_runs": 1, "latency_batch_size": 4, "baseline": True},
        "export": ["safetensors", "onnx"],
        "gates": {"max_gap": 100},
    }
    spec.update(over)
    return {k: v for k, v in spec.items() if v is not None}


def distill_run(spec: dict[str, Any], tmp_path: Path, name: str) -> tuple[int, dict[str, Any], str]:
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(spec))
    out = tmp_path / name
    res = CliRunner().invoke(app, ["run", str(path), "--out", str(out)])
    report = json.loads((out / "report.json").read_text()) if res.exit_code == 0 else {}
    return res.exit_code, report, res.output


def check_student(spec: dict[str, Any], out: Path, report: dict[str, Any]) -> None:
    student = load_safetensors_student(out / "student.safetensors", out / "student.json")
    plain = build_model("convnet", (1, 8, 8), 10, channels=[4, 8])
    assert student.state_dict().keys() == plain.state_dict().keys()
    data = load_data(parse_spec(spec).data)
    got = accuracy(student, data.x_val, data.y_val, device=torch.device("cpu"))
    assert got == pytest.approx(report["student"]["accuracy"], abs=1e-3)
    assert {a["format"] for a in report["artifacts"]} == {"safetensors", "onnx"}


def check_dynamic(report: dict[str, Any], ratio: int, scenario: str) -> None:
    dt = report["dynamic_teacher"]
    assert (dt["ratio"], dt["scenario"]) == (ratio, scenario)
    student = build_model("convnet", (1, 8, 8), 10, channels=[4, 8])
    assert dt["params"] == sum(p.numel() for p in expand(student, ratio).parameters())
    gaps, s = report["gaps"], report["student"]["accuracy"]
    assert gaps["dynamic_student"] == pytest.approx(dt["accuracy"] - s, abs=1e-3)


def test_scenario_with_a_static_teacher(tmp_path: Path) -> None:
    spec = job({"ratio": 3, "kd": "dkd"})
    code, report, output = distill_run(spec, tmp_path, "teacher")
    assert code == 0, output
    check_student(spec, tmp_path / "teacher", report)
    check_dynamic(report, 3, "teacher")
    t, dt, s = (report[k]["accuracy"] for k in ("teacher", "dynamic_teacher", "student"))
    assert report["gaps"]["teacher_dynamic"] == pytest.approx(t - dt, abs=1e-3)
    assert report["gap"] == report["gaps"]["teacher_student"] == pytest.approx(t - s, abs=1e-3)
    assert report["gap_reference"] == "teacher"
    assert "GPD, ratio 3, scenario teacher" in " ".join(output.split())


def test_scenario_from_scratch_then_finetune_from_its_student(tmp_path: Path) -> None:
    spec = job({"scenario": "scratch", "cbr": True}, teacher=None)
    code, report, output = distill_run(spec, tmp_path, "scratch")
    assert code == 0, output
    check_student(spec, tmp_path / "scratch", report)
    check_dynamic(report, 2, "scratch")
    assert report["teacher"] is None and report["gaps"]["teacher_student"] is None
    assert report["gap_reference"] == "dynamic_teacher"
    assert report["gap"] == report["gaps"]["dynamic_student"]
    assert report["gates"]["checks"][0]["value"] == pytest.approx(report["gap"], abs=1e-3)

    # Fine-tune the student the scratch job exported (an earlier job's output).
    weights = tmp_path / "scratch" / "student.safetensors"
    ft = job(
        {"scenario": "finetune", "cbr": True},
        teacher=None,
        student={**STUDENT, "checkpoint": str(weights)},
        train={"epochs": 1, "batch_size": 64, "optimizer": {"name": "adam", "lr": 0.0005}},
    )
    code, ft_report, output = distill_run(ft, tmp_path, "finetune")
    assert code == 0, output
    check_student(ft, tmp_path / "finetune", ft_report)
    check_dynamic(ft_report, 2, "finetune")


@pytest.mark.parametrize(
    ("arch", "kwargs"),
    [
        ("convnet", {"channels": [4, 8]}),
        ("resnet8", {}),
        ("mobilenet_tiny", {}),
        ("vit_tiny", {"dim": 16, "depth": 1, "heads": 2}),  # attention's Linears stay plain
        ("mlp", {"hidden": [16]}),
    ],
)
def test_finetune_starts_exactly_from_the_given_student(arch: str, kwargs: dict[str, Any]) -> None:
    """CBR's fine-tune initialisation and IR preserve the function: before any step, the
    trainee's student and its DT both compute the checkpoint's function."""
    torch.manual_seed(3)
    student = build_model(arch, (1, 8, 8), 10, **kwargs).eval()
    trainee = GPDTrainee(student, 2, noise=0.0, seed=0, branches="finetune").eval()
    x = torch.randn(5, 1, 8, 8)
    with torch.no_grad():
        want = student(x)
        torch.testing.assert_close(trainee(x), want, atol=1e-5, rtol=0)
        torch.testing.assert_close(trainee.dynamic_teacher()(x), want, atol=1e-5, rtol=0)
        torch.testing.assert_close(trainee.student()(x), want, atol=1e-5, rtol=0)
    assert trainee.student().state_dict().keys() == student.state_dict().keys()


@pytest.mark.parametrize(
    ("method", "over", "field"),
    [
        ({"scenario": "scratch"}, {}, "teacher"),  # a static teacher given to a teacher-free run
        ({"scenario": "teacher"}, {"teacher": None}, "teacher"),
        ({"ratio": 1}, {}, "method.ratio"),
        ({"kd": "fitnets"}, {}, "method.kd"),
    ],
)
def test_spec_errors_name_the_field(
    method: dict[str, Any], over: dict[str, Any], field: str
) -> None:
    with pytest.raises(SpecError) as info:
        parse_spec(job(method, **over))
    assert field in [loc for loc, _ in info.value.errors]


def test_finetune_without_a_student_checkpoint_exits_2(tmp_path: Path) -> None:
    code, _, output = distill_run(job({"scenario": "finetune"}, teacher=None), tmp_path, "bad")
    assert code == 2 and "student.checkpoint" in output


def test_unsupported_student_is_an_input_error_before_training(tmp_path: Path) -> None:
    spec = job({}, student={"arch": "mlp", "kwargs": {"hidden": [8]}, "output": 0})
    code, _, output = distill_run(spec, tmp_path, "bad")
    assert code == 2 and "student.output" in output


def test_resume_equals_uninterrupted(tmp_path: Path) -> None:
    spec = parse_spec(job({"scenario": "scratch", "noise": 1e-3}, teacher=None))
    data = load_data(spec.data)
    train = TrainSpec(epochs=2, batch_size=128, device="cpu", seed=1)

    def trainee() -> GPDTrainee:
        torch.manual_seed(0)
        return GPDTrainee(build_model("convnet", (1, 8, 8), 10, channels=[4, 8]), 2, 1e-3, 1)

    class Crash(Exception):
        pass

    class CrashAfterFirst(Callbacks):
        def on_epoch_end(self, record: EpochRecord) -> None:
            if record.epoch == 1:
                raise Crash

    whole = trainee()
    fit(
        whole,
        registry.build("gpd", {"scenario": "scratch"}),
        StageContext(name="d", data=data, train=train),
    )
    ckpt = FolderCheckpoints(tmp_path / "ckpt")
    with pytest.raises(Crash):
        fit(
            trainee(),
            registry.build("gpd", {"scenario": "scratch"}),
            StageContext(
                name="d", data=data, train=train, callbacks=CrashAfterFirst(), checkpoints=ckpt
            ),
        )
    resumed = trainee()
    res = fit(
        resumed,
        registry.build("gpd", {"scenario": "scratch"}),
        StageContext(name="d", data=data, train=train, checkpoints=ckpt),
    )
    assert res.resumed_from_epoch == 1
    a, b = whole.state_dict(), resumed.state_dict()
    assert a.keys() == b.keys() and any(k.startswith("pair.student_stats") for k in a)
    for k in a:
        assert torch.equal(a[k], b[k]), k


def test_a_job_reference_stays_as_written_and_a_local_run_says_what_to_do(tmp_path: Path) -> None:
    """`job:<id>` is the service's reference to an earlier job's student: loading the spec
    keeps it (no path made of it), and a local run explains how to get the file."""
    spec = job(
        {"scenario": "finetune"}, teacher=None, student={**STUDENT, "checkpoint": "job:abc123"}
    )
    path = tmp_path / "ft.yaml"
    path.write_text(yaml.safe_dump(spec))
    assert load_spec(path).student.checkpoint == "job:abc123"
    code, _, output = distill_run(spec, tmp_path, "ft")
    flat = " ".join(output.split())
    assert code == 2 and "student.checkpoint" in flat and "distill download" in flat
