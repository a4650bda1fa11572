"""`distill submit` and the job commands against a live API and worker: every exit code
(0 passed, 1 failed, 2 invalid, 3 gate failed, 4 timed out), JSON and JUnit output, downloads,
and `jobs` / `status` / `logs` / `cancel` / `retry` / `download`."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
import uuid
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

import pytest
import yaml
from typer.testing import CliRunner

from client.cli import app
from client.sdk import Distillery

from .conftest import Service, spec, write_dataset

runner = CliRunner()


def distill(service: Service, *args: str, token: str | None = None) -> Any:
    return runner.invoke(app, list(args), env=service.env(token))


def write_spec(folder: Path, data: dict[str, Any], name: str = "spec.yaml") -> Path:
    path = folder / name
    path.write_text(yaml.safe_dump(data))
    return path


def junit_cases(path: Path) -> dict[str, ET.Element]:
    root = ET.parse(path).getroot()
    assert root.tag == "testsuites"
    (suite,) = root.findall("testsuite")
    cases = {c.get("name"): c for c in suite.findall("testcase")}
    assert suite.get("tests") == str(len(cases))
    return cases


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def passed(service: Service, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """One job run through `distill submit --wait` with a gate that passes: its spec names a
    local dataset (uploaded by the command), and it is downloaded in ONNX."""
    folder = tmp_path_factory.mktemp("passed")
    write_dataset(folder / "train.npz")
    path = write_spec(folder, spec(data={"source": "train.npz"}, gates={"max_gap": 100.0}))
    key = uuid.uuid4().hex
    result = distill(
        service, "submit", str(path), "--wait", "--timeout", "120", "--poll", "0.3",
        "--min-accuracy", "0", "--junit", str(folder / "junit.xml"),
        "--download", str(folder / "student"), "--format", "onnx",
        "--idempotency-key", key, "--json",
    )  # fmt: skip
    assert result.exit_code == 0, result.stderr + service.log_tail()
    return {
        "folder": folder,
        "spec": path,
        "key": key,
        "json": json.loads(result.stdout),
        "stderr": result.stderr,
    }


def test_exit_0_when_the_job_passes_its_gates(passed: dict[str, Any], service: Service) -> None:
    out = passed["json"]
    assert (out["result"], out["exit_code"], out["job"]["status"]) == ("passed", 0, "succeeded")
    assert {c["name"] for c in out["gates"]["checks"]} == {"max_gap", "min_student_accuracy"}
    assert out["evaluation"]["teacher_accuracy"] > 0
    # the local dataset was uploaded and named by its id
    with Distillery(service.url, service.token_a) as d:
        job = d.job(out["job"]["id"])
    assert job.spec["data"]["source"].startswith("upload:")
    # the student was downloaded and verified
    (onnx,) = [a for a in out["artifacts"] if a["format"] == "onnx"]
    (path,) = out["downloaded"]
    assert Path(path).parent == passed["folder"] / "student"
    assert sha256(Path(path)) == onnx["sha256"]
    # the JUnit report has one passing case per gate
    cases = junit_cases(passed["folder"] / "junit.xml")
    assert set(cases) == {"max_gap", "min_student_accuracy"}
    assert all(len(c) == 0 for c in cases.values())
    assert "gate max_gap" in passed["stderr"]


def test_exit_3_when_a_gate_is_too_strict(
    passed: dict[str, Any], service: Service, tmp_path: Path
) -> None:
    """The same idempotency key judges the same finished job again, with a stricter gate."""
    report = tmp_path / "strict.xml"
    result = distill(
        service, "submit", str(passed["spec"]), "--idempotency-key", passed["key"],
        "--min-accuracy", "100", "--junit", str(report), "--json",
    )  # fmt: skip
    assert result.exit_code == 3, result.stderr
    out = json.loads(result.stdout)
    assert out["result"] == "gate_failed" and out["job"]["id"] == passed["json"]["job"]["id"]
    assert out["job"]["replayed"] is True and out["downloaded"] == []
    cases = junit_cases(report)
    assert set(cases) == {"max_gap", "min_student_accuracy"}
    assert cases["max_gap"].find("failure") is None
    failure = cases["min_student_accuracy"].find("failure")
    assert failure is not None and "100" in failure.get("message", "")
    root = ET.parse(report).getroot()
    assert root.find("testsuite").get("failures") == "1"  # type: ignore[union-attr]


def test_exit_1_when_the_job_fails(service: Service, tmp_path: Path) -> None:
    (tmp_path / "broken.npz").write_bytes(b"this is not a numpy archive" * 10)
    path = write_spec(tmp_path, spec(data={"source": "broken.npz"}, gates={"max_gap": 5}))
    report = tmp_path / "junit.xml"
    result = distill(
        service, "submit", str(path), "--wait", "--timeout", "120", "--poll", "0.3",
        "--junit", str(report),
    )  # fmt: skip
    assert result.exit_code == 1, result.stderr + service.log_tail()
    assert "failed (invalid_input)" in result.stderr and "broken.npz" in result.stderr
    job_id = result.stdout.strip()
    error = junit_cases(report)["max_gap"].find("error")
    assert error is not None and "invalid_input" in error.get("message", "")

    # the job commands on the failed job
    shown = distill(service, "status", job_id, "--json")
    assert shown.exit_code == 0 and json.loads(shown.stdout)["error_code"] == "invalid_input"
    again = distill(service, "retry", job_id)
    assert again.exit_code == 0 and "queued" in again.stderr
    stopped = distill(service, "cancel", job_id)
    assert stopped.exit_code == 0, stopped.stderr
    with Distillery(service.url, service.token_a) as d:
        assert d.job(job_id).wait(timeout=60, poll=0.3).status in ("cancelled", "failed")


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        ({"method": {"name": "no-such-method"}}, "method.name"),
        ({"data": {"source": "missing.npz"}}, "data.source"),
        ({"train": {"epochs": 0}}, "train.epochs"),
    ],
)
def test_exit_2_for_an_invalid_spec(
    service: Service, tmp_path: Path, change: dict[str, Any], expected: str
) -> None:
    path = write_spec(tmp_path, spec(**change))
    result = distill(service, "submit", str(path), "--wait", "--junit", str(tmp_path / "j.xml"))
    assert result.exit_code == 2, result.stderr
    assert expected in result.stderr
    assert junit_cases(tmp_path / "j.xml")["job"].find("error") is not None


def test_exit_2_for_a_refused_request(service: Service, tmp_path: Path) -> None:
    path = write_spec(tmp_path, spec())
    bad_key = distill(service, "submit", str(path), token="dk_not-a-real-key")
    assert bad_key.exit_code == 2 and "not valid" in bad_key.stderr
    unreadable = distill(service, "submit", str(tmp_path / "nope.yaml"))
    assert unreadable.exit_code == 2 and "cannot read" in unreadable.stderr
    assert distill(service, "status", "0" * 32).exit_code == 2  # not found


def test_exit_4_when_waiting_times_out(service: Service, tmp_path: Path) -> None:
    long = spec(
        teacher={"arch": "mlp", "kwargs": {"hidden": [64]}, "train": {"epochs": 400}},
        data={
            "source": "synthetic",
            "synthetic": {"input_shape": [8], "num_classes": 3, "n_train": 2000, "n_val": 64},
        },
    )
    path = write_spec(tmp_path, long)
    result = distill(
        service, "submit", str(path), "--timeout", "1", "--poll", "0.2", "--cancel-on-timeout",
        "--json",
    )  # fmt: skip
    assert result.exit_code == 4, result.stderr
    out = json.loads(result.stdout)
    assert out["result"] == "timeout" and "cancel requested" in out["message"]
    with Distillery(service.url, service.token_a) as d:  # it stops: the worker is free again
        assert d.job(out["job"]["id"]).wait(timeout=60, poll=0.3).status == "cancelled"


def test_job_commands(passed: dict[str, Any], service: Service, tmp_path: Path) -> None:
    job_id = passed["json"]["job"]["id"]
    listing = distill(service, "jobs", "--limit", "50")
    assert listing.exit_code == 0 and job_id in listing.stdout
    assert job_id not in distill(service, "jobs", token=service.token_b).stdout
    status = distill(service, "status", job_id)
    assert status.exit_code == 0 and "succeeded" in status.stdout and "gap" in status.stdout
    logs = distill(service, "logs", job_id)
    assert logs.exit_code == 0
    assert "job queued" in logs.stdout and "distill epoch 2:" in logs.stdout
    refused = distill(service, "retry", job_id)
    assert refused.exit_code == 2 and "succeeded" in refused.stderr
    got = distill(service, "download", job_id, "-o", f"{tmp_path}/")
    assert got.exit_code == 0, got.stderr
    path = Path(got.stdout.strip())
    assert path.name.endswith("-student.onnx") and path.parent == tmp_path  # the spec's 1st
    assert "verified" in got.stderr


def test_the_installed_command_runs(passed: dict[str, Any], service: Service) -> None:
    """The `distill` console script itself (not the in-process runner), with --server/--token."""
    exe = Path(sys.executable).parent / "distill"
    job_id = passed["json"]["job"]["id"]
    args = ["--server", service.url, "--token", service.token_a]
    result = subprocess.run(
        [str(exe), "status", job_id, "--json", *args], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["status"] == "succeeded"
