"""Every example spec runs through `distill run` (shortened to one epoch per stage): each
method and scheme the examples show works end to end as a user would run it."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml
from safetensors.torch import save_file
from typer.testing import CliRunner

from client.cli import app
from kdcore.data import load_data
from kdcore.models.registry import build_model
from kdcore.spec import DataSpec

EXAMPLES = sorted((Path(__file__).resolve().parents[2] / "examples").glob("*.yaml"))


def shortened(spec: dict[str, Any]) -> dict[str, Any]:
    """One epoch for every stage, one latency run, one export format, no gates."""
    teachers = [spec["teacher"]] if "teacher" in spec else list(spec.get("teachers", []))
    for teacher in teachers:
        if "train" in teacher:
            teacher["train"] = {**teacher["train"], "epochs": 1}
    spec["train"] = {**spec.get("train", {}), "epochs": 1}
    spec["evaluate"] = {**spec.get("evaluate", {}), "latency_runs": 1, "baseline": False}
    spec["export"] = ["safetensors"]
    spec.pop("gates", None)
    return spec


def with_starting_weights(spec: dict[str, Any], folder: Path) -> dict[str, Any]:
    """A spec that starts from an earlier run's student (GPD fine-tuning) gets a freshly
    initialised one of the same architecture, saved as that run would save it."""
    student = spec["student"]
    if "checkpoint" in student:
        data = load_data(DataSpec.model_validate(spec["data"]))
        shape, classes = data.input_shape, data.num_classes
        model = build_model(student["arch"], shape, classes, **student.get("kwargs", {}))
        student["checkpoint"] = str(folder / "earlier-student.safetensors")
        save_file(model.state_dict(), student["checkpoint"])
    return spec


@pytest.mark.parametrize("example", EXAMPLES, ids=[p.stem for p in EXAMPLES])
def test_example_runs_through_distill_run(example: Path, tmp_path: Path) -> None:
    spec = with_starting_weights(shortened(yaml.safe_load(example.read_text())), tmp_path)
    path = tmp_path / example.name
    path.write_text(yaml.safe_dump(spec))
    out = tmp_path / "out"
    result = CliRunner().invoke(app, ["run", str(path), "--out", str(out), "-q"])
    assert result.exit_code == 0, result.output
    report = json.loads((out / "report.json").read_text())
    assert report["method"]["name"] == spec.get("method", {}).get("name", "kd")
    assert (out / "student.safetensors").exists() and (out / "student.json").exists()
    assert 0 <= report["student"]["accuracy"] <= 100
