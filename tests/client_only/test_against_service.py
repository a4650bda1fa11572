"""The client alone against a live service: the `distill` command and the SDK submit a spec,
wait for the job, read its evaluation and download the student, checked by its sha256."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from client.sdk import Distillery

WAIT_S = 300


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_cli_submits_waits_and_downloads(service: Any, spec_file: Path, tmp_path: Path) -> None:
    out = tmp_path / "dist"
    done = service.distill(
        "submit", str(spec_file), "--wait", "--timeout", str(WAIT_S), "--json",
        "--download", f"{out}/", "--format", "onnx",
    )  # fmt: skip
    assert done.returncode == 0, done.stderr + service.log_tail()
    result = json.loads(done.stdout)
    assert result["job"]["status"] == "succeeded"
    evaluation = result["evaluation"]
    assert 0 <= evaluation["student_accuracy"] <= 100 and evaluation["student_params"] > 0
    assert isinstance(evaluation["gap"], float)
    (onnx,) = out.glob("*.onnx")
    (artifact,) = [a for a in result["artifacts"] if a["format"] == "onnx"]
    assert sha256(onnx) == artifact["sha256"]

    status = service.distill("status", result["job"]["id"], "--json")
    assert status.returncode == 0, status.stderr
    assert json.loads(status.stdout)["status"] == "succeeded"


def test_sdk_submits_waits_and_downloads(service: Any, spec_file: Path, tmp_path: Path) -> None:
    with Distillery(service.url, service.token) as d:
        job = d.submit(spec_file).wait(timeout=WAIT_S, poll=0.5)
        assert job.status == "succeeded", service.log_tail()
        assert job.evaluation is not None and 0 <= job.evaluation.student_accuracy <= 100
        got = job.download("safetensors", tmp_path / "student.safetensors")
        assert got.size_bytes == got.path.stat().st_size > 0
        assert sha256(got.path) == got.sha256 == job.artifact("safetensors").sha256
        assert job.id in {j.id for j in d.jobs(limit=50)}


def test_a_bad_key_is_refused(service: Any) -> None:
    refused = service.distill("jobs", token="dk_not-a-key")
    assert refused.returncode == 2, refused.stderr
