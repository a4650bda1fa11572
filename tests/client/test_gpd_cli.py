"""GPD jobs through the client: a job without a static teacher prints and reports sensibly
(no teacher numbers, the gap to the dynamic teacher, never "None"), and `distill submit` sends
`student.checkpoint: job:<id>` as written, so a job can fine-tune an earlier job's student.
Against the live service of conftest.py, plus the display code on a hand-made evaluation."""

from __future__ import annotations

import json
import uuid
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

import pytest
import yaml
from typer.testing import CliRunner

from client import junit, remote
from client.cli import app
from client.gates import effective_gates, judge
from client.outcome import Outcome
from client.sdk import Distillery, Evaluation, Job
from client.specfile import local_files

from .conftest import Service

runner = CliRunner()

STUDENT = {"arch": "convnet", "kwargs": {"channels": [4, 8]}}
TEACHERLESS = {
    "student_accuracy": 90.0,
    "gap": 1.5,
    "gap_reference": "dynamic_teacher",
    "teacher_accuracy": None,
    "teacher_params": None,
    "compression_ratio": None,
    "teacher_latency_ms": None,
    "student_params": 438,
    "student_latency_ms": 0.1,
    "student_size_bytes": 3000,
    "dynamic_teacher_accuracy": 91.5,
    "dynamic_teacher_params": 1442,
    "dynamic_teacher_ratio": 2,
    "gap_teacher_dynamic": None,
    "gap_dynamic_student": 1.5,
    "gate_passed": True,
    "gates": {},
    "created_at": "2026-11-24T00:00:00+00:00",
}


def gpd_spec(**sections: Any) -> dict[str, Any]:
    spec: dict[str, Any] = {
        "name": f"client-gpd-{uuid.uuid4().hex[:8]}",
        "student": STUDENT,
        "data": {"source": "digits"},
        "method": {"name": "gpd", "scenario": "scratch", "ratio": 2},
        "train": {"epochs": 1, "batch_size": 64},
        "evaluate": {"latency_runs": 1, "latency_batch_size": 4},
        "export": ["safetensors"],
        "gates": {"max_gap": 100.0},
    }
    spec.update(sections)
    return spec


def fake_job(evaluation: dict[str, Any]) -> Job:
    data = {"id": "j1", "name": "gpd", "status": "succeeded", "evaluation": evaluation}
    return Job(Distillery("http://127.0.0.1:1"), {**data, "spec": {}, "artifacts": []})


def test_an_evaluation_without_teacher_fields_builds_with_defaults() -> None:
    """An older server sends no dynamic-teacher fields; a newer one may send more."""
    old = {k: v for k, v in TEACHERLESS.items() if "dynamic" not in k and k != "gap_reference"}
    ev = Evaluation(**{k: v for k, v in old.items() if k != "created_at"})
    assert ev.gap_reference == "teacher" and ev.dynamic_teacher_accuracy is None
    ev = fake_job({**TEACHERLESS, "some_future_field": 1}).evaluation
    assert ev is not None and ev.dynamic_teacher_ratio == 2 and not ev.has_teacher


def test_a_teacherless_evaluation_prints_without_none(capsys: pytest.CaptureFixture[str]) -> None:
    job = fake_job(TEACHERLESS)
    ev = job.evaluation
    assert ev is not None
    line = ev.describe()
    assert (
        line
        == "dynamic teacher 91.50% (x2)  student 90.00%  gap 1.50 points to the dynamic teacher"
    )
    classic = Evaluation(
        student_accuracy=93.0, gap=4.0, student_params=2, student_latency_ms=0.5,
        student_size_bytes=100, gate_passed=True, gates={}, teacher_accuracy=97.0,
        teacher_params=10, compression_ratio=5.0, teacher_latency_ms=1.0,
    )  # fmt: skip
    assert (
        classic.describe()
        == "teacher 97.00%  student 93.00%  gap 4.00 points  5.0x fewer parameters"
    )

    remote.print_job(job)
    out = capsys.readouterr().out
    assert "None" not in out and "no teacher" in out and "(to the dynamic teacher)" in out
    assert "dynamic   teacher 91.50% (GPD, 2x wider, 1,442 params)" in out

    verdict = judge(effective_gates({}, max_gap=1.0), ev.gap, ev.student_accuracy)
    outcome = Outcome("gate_failed", "gate failed", job=job, gates=verdict)
    root = junit.report(outcome, ["max_gap"], "http://s").getroot()
    props = {p.get("name"): p.get("value") for p in root.iter("property")}
    assert "teacher_accuracy" not in props and "compression_ratio" not in props
    assert props["dynamic_teacher_accuracy"] == "91.5"
    assert props["gap_reference"] == "dynamic_teacher" and props["gap"] == "1.5"
    assert "None" not in ET.tostring(root, encoding="unicode")


def test_a_job_reference_is_not_a_local_file(tmp_path: Path) -> None:
    spec = {"student": {**STUDENT, "checkpoint": "job:abc"}, "data": {"source": "digits"}}
    assert local_files(spec, tmp_path) == []


def test_submit_a_teacherless_job_then_finetune_its_student(
    service: Service, tmp_path: Path
) -> None:
    env = service.env()
    scratch = tmp_path / "scratch.yaml"
    scratch.write_text(yaml.safe_dump(gpd_spec()))
    junit_path = tmp_path / "junit.xml"
    args = ["submit", str(scratch), "--timeout", "120", "--poll", "0.3", "--json"]
    result = runner.invoke(app, [*args, "--junit", str(junit_path)], env=env)
    assert result.exit_code == 0, result.stderr + service.log_tail()
    assert "None" not in result.stderr and "to the dynamic teacher" in result.stderr
    out = json.loads(result.stdout)
    ev = out["evaluation"]
    assert ev["teacher_accuracy"] is None and ev["gap_reference"] == "dynamic_teacher"
    assert ev["dynamic_teacher_ratio"] == 2 and ev["dynamic_teacher_accuracy"] is not None
    assert "None" not in junit_path.read_text()
    first = out["job"]["id"]

    status = runner.invoke(app, ["status", first], env=env)
    assert status.exit_code == 0 and "no teacher" in status.stdout and "None" not in status.stdout

    # `distill submit` sends job:<id> as written (no upload, no "no such file")
    finetune = tmp_path / "finetune.yaml"
    spec = gpd_spec(
        student={**STUDENT, "checkpoint": f"job:{first}"},
        method={"name": "gpd", "scenario": "finetune", "ratio": 2},
    )
    finetune.write_text(yaml.safe_dump(spec))
    result = runner.invoke(app, ["submit", str(finetune), *args[2:]], env=env)
    assert result.exit_code == 0, result.stderr + service.log_tail()
    second = json.loads(result.stdout)["job"]["id"]
    with Distillery(service.url, service.token_a) as d:
        job = d.job(second)
    assert job.spec["student"]["checkpoint"] == f"job:{first}"

    # project b cannot start from project a's job: 422 naming the field (exit 2)
    refused = runner.invoke(app, ["submit", str(finetune)], env=service.env(service.token_b))
    assert refused.exit_code == 2, refused.stderr
    assert "student.checkpoint" in refused.stderr and "does not exist" in refused.stderr
