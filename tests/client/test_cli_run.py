"""`distill run` end to end on tiny data: report contents and every exit code."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from client.cli import app

runner = CliRunner()


def tiny_spec(**overrides) -> dict:
    spec = {
        "name": "tiny",
        "teacher": {"arch": "mlp", "kwargs": {"hidden": [32]}, "train": {"epochs": 2}},
        "student": {"arch": "mlp", "kwargs": {"hidden": [8]}},
        "data": {
            "source": "synthetic",
            "synthetic": {"input_shape": [12], "num_classes": 3, "n_train": 96, "n_val": 48},
        },
        "method": {"name": "kd", "temperature": 2.0},
        "train": {"epochs": 2, "batch_size": 32},
        "evaluate": {"baseline": True, "latency_runs": 2},
        "export": ["onnx", "safetensors"],
    }
    spec.update(overrides)
    return spec


def write(tmp_path: Path, spec: dict) -> Path:
    path = tmp_path / "spec.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


def test_run_writes_report_and_artifacts(tmp_path: Path) -> None:
    out = tmp_path / "out"
    result = runner.invoke(app, ["run", str(write(tmp_path, tiny_spec())), "--out", str(out), "-q"])
    assert result.exit_code == 0, result.output
    report = json.loads((out / "report.json").read_text())
    for key in (
        "name",
        "method",
        "teacher",
        "student",
        "baseline",
        "gap",
        "gates",
        "artifacts",
        "history",
        "timings",
    ):
        assert key in report
    for who in ("teacher", "student"):
        assert {"accuracy", "params", "size_bytes", "latency_ms"} <= report[who].keys()
    assert report["student"]["params"] < report["teacher"]["params"]
    assert report["gap"] == pytest.approx(
        report["teacher"]["accuracy"] - report["student"]["accuracy"], abs=1e-3
    )
    assert report["baseline"]["accuracy"] >= 0
    assert [h["epoch"] for h in report["history"]] == [1, 2]
    assert {"train_loss", "student_accuracy"} <= report["history"][0].keys()
    assert {a["format"] for a in report["artifacts"]} == {"onnx", "safetensors"}
    for a in report["artifacts"]:
        assert Path(a["path"]).exists() and a["max_abs_diff"] <= 1e-4 and len(a["sha256"]) == 64
    assert {"teacher", "baseline", "distill", "export"} <= report["timings"].keys()
    assert report["gates"] == {"passed": True, "checks": []}
    assert report["teacher_cache"] is True


def test_invalid_spec_exits_2_naming_the_field(tmp_path: Path) -> None:
    spec = tiny_spec(method={"name": "kdd"})
    result = runner.invoke(app, ["run", str(write(tmp_path, spec)), "--out", str(tmp_path / "o")])
    assert result.exit_code == 2
    assert "method.name" in result.output and "known: " in result.output
    assert " kd," in result.output  # the list names the methods there are


def test_bad_input_exits_2_naming_the_field(tmp_path: Path) -> None:
    spec = tiny_spec(data={"source": str(tmp_path / "missing.npz")})
    result = runner.invoke(app, ["run", str(write(tmp_path, spec)), "--out", str(tmp_path / "o")])
    assert result.exit_code == 2
    assert "data.source" in result.output


def test_failed_gate_exits_3(tmp_path: Path) -> None:
    spec = tiny_spec(gates={"max_gap": -50.0, "min_student_accuracy": 0.0})
    out = tmp_path / "out"
    result = runner.invoke(app, ["run", str(write(tmp_path, spec)), "--out", str(out), "-q"])
    assert result.exit_code == 3, result.output
    gates = json.loads((out / "report.json").read_text())["gates"]
    assert gates["passed"] is False
    assert [(c["name"], c["passed"]) for c in gates["checks"]] == [
        ("max_gap", False),
        ("min_student_accuracy", True),
    ]


def test_unexpected_error_exits_1(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import kdcore.pipeline

    def broken(*args, **kwargs):
        raise RuntimeError("disk on fire")

    monkeypatch.setattr(kdcore.pipeline, "export_student", broken)
    result = runner.invoke(
        app, ["run", str(write(tmp_path, tiny_spec())), "--out", str(tmp_path / "o"), "-q"]
    )
    assert result.exit_code == 1
    assert "disk on fire" in result.output


def test_console_script_is_installed(tmp_path: Path) -> None:
    """The real `distill` entry point, in a process of its own."""
    distill = Path(sys.executable).parent / "distill"
    proc = subprocess.run(
        [str(distill), "validate", str(write(tmp_path, tiny_spec()))],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["method"]["temperature"] == 2.0
