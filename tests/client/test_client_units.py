"""The client's pieces without a server: spec files, gates, JUnit, SSE parsing, error mapping,
and the CI examples."""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from sqlalchemy.orm import Session
from typer.testing import CliRunner

from client import junit
from client.cli import app
from client.errors import Conflict, InvalidRequest, InvalidSpec, NotFound, ServerError, Unauthorized
from client.errors import error_from_response as to_error
from client.gates import effective_gates, judge
from client.outcome import Outcome
from client.sdk import Distillery, Job
from client.specfile import file_fields, local_files, with_uploads
from client.sse import events
from kdcore.spec import JobSpec, file_references
from store.auth import authenticate, hash_key
from store.db import make_engine
from store.models import ApiKey

ROOT = Path(__file__).resolve().parents[2]


def test_the_client_knows_every_file_field_of_the_spec() -> None:
    """The fields kdcore.spec.file_references reports, over every kind of teacher."""
    for teachers in (
        {"teacher": {"arch": "mlp", "checkpoint": "t.pt"}},
        {"teacher": {"onnx": "t.onnx"}},
        {"teacher": {"torchscript": "t.pt"}},
        {"teachers": [{"onnx": "a.onnx"}, {"arch": "mlp", "checkpoint": "b.pt"}]},
    ):
        raw = {
            "name": "x",
            **teachers,
            "student": {"arch": "mlp", "checkpoint": "s.pt"},
            "data": {"source": "d.npz"},
        }
        expected = {(loc, v, kind) for loc, v, kind in file_references(JobSpec.model_validate(raw))}
        found = {(loc, v, kind) for loc, v, kind in file_fields(raw) if v}
        assert found == expected


def test_a_teacher_in_a_list_is_uploaded_too(tmp_path: Path) -> None:
    (tmp_path / "b.onnx").write_bytes(b"onnx")
    spec = {"teachers": [{"arch": "mlp", "train": {}}, {"onnx": "b.onnx"}], "data": {}}
    found = local_files(spec, tmp_path)
    assert [(f.loc, f.kind, f.path) for f in found] == [
        ("teachers.1.onnx", "model", tmp_path / "b.onnx")
    ]
    assert with_uploads(spec, {"teachers.1.onnx": "upload:7"})["teachers"][1]["onnx"] == "upload:7"


def test_local_files_are_found_from_the_spec_folder(tmp_path: Path) -> None:
    (tmp_path / "teacher.onnx").write_bytes(b"onnx")
    (tmp_path / "d.npz").write_bytes(b"npz")
    spec = {
        "teacher": {"onnx": "teacher.onnx"},
        "student": {"arch": "mlp"},
        "data": {"source": "d.npz"},
    }
    found = {f.loc: (f.kind, f.path) for f in local_files(spec, tmp_path)}
    assert found == {
        "teacher.onnx": ("model", tmp_path / "teacher.onnx"),
        "data.source": ("dataset", tmp_path / "d.npz"),
    }
    rewritten = with_uploads(spec, {"teacher.onnx": "upload:1", "data.source": "upload:2"})
    assert rewritten["teacher"]["onnx"] == "upload:1" and spec["teacher"]["onnx"] == "teacher.onnx"
    assert (
        local_files({"data": {"source": "digits"}, "teacher": {"onnx": "upload:9"}}, tmp_path) == []
    )
    with pytest.raises(InvalidSpec) as info:
        local_files({"data": {"source": "gone.npz"}, "student": {"checkpoint": "x.pt"}}, tmp_path)
    assert [e.loc for e in info.value.errors] == ["student.checkpoint", "data.source"]


def test_command_line_gates_replace_and_extend_the_specs() -> None:
    gates = effective_gates({"gates": {"max_gap": 5.0}}, min_accuracy=95.0)
    assert (gates.max_gap, gates.min_student_accuracy) == (5.0, 95.0)
    assert effective_gates({"gates": {"max_gap": 5.0}}, max_gap=1.0).max_gap == 1.0
    verdict = judge(gates, gap=4.0, student_accuracy=93.0)
    assert verdict["passed"] is False
    assert [c["passed"] for c in verdict["checks"]] == [True, False]  # gap 4 <= 5; 93 < 95
    assert judge(effective_gates({}), 87.0, 10.0) == {"passed": True, "checks": []}


def fake_job(status: str, evaluation: dict[str, Any] | None = None) -> Job:
    return Job(
        Distillery("http://127.0.0.1:1"),
        {"id": "j1", "name": "my-job", "status": status, "evaluation": evaluation, "spec": {}},
    )


def test_junit_has_one_case_per_gate_and_fails_the_failed_one(tmp_path: Path) -> None:
    ev = {
        "teacher_accuracy": 97.0,
        "student_accuracy": 93.0,
        "gap": 4.0,
        "teacher_params": 10,
        "student_params": 2,
        "compression_ratio": 5.0,
        "teacher_latency_ms": 1.0,
        "student_latency_ms": 0.5,
        "student_size_bytes": 100,
        "gate_passed": True,
        "gates": {},
    }
    verdict = judge(effective_gates({}, max_gap=3.0, min_accuracy=90.0), 4.0, 93.0)
    out = Outcome("gate_failed", "gate failed", job=fake_job("succeeded", ev), gates=verdict)
    path = tmp_path / "r.xml"
    junit.write(path, out, ["max_gap", "min_student_accuracy"], "http://s")
    suite = ET.parse(path).getroot().find("testsuite")
    assert suite is not None and suite.get("failures") == "1" and suite.get("errors") == "0"
    cases = {c.get("name"): c for c in suite.findall("testcase")}
    assert list(cases) == ["max_gap", "min_student_accuracy"]
    failure = cases["max_gap"].find("failure")
    assert failure is not None and "gap 4.0 > 3.0" in failure.get("message", "")
    assert cases["min_student_accuracy"].find("failure") is None
    props = {p.get("name"): p.get("value") for p in suite.iter("property")}
    assert props["job_id"] == "j1" and props["url"] == "http://s/v1/jobs/j1"


def test_junit_when_the_job_never_produced_numbers(tmp_path: Path) -> None:
    failed = Outcome("failed", "job j1 failed (invalid_input): bad data", job=fake_job("failed"))
    root = junit.report(failed, ["max_gap"], "http://s").getroot()
    (case,) = root.iter("testcase")
    error = case.find("error")
    assert (
        error is not None
        and error.get("type") == "failed"
        and "bad data" in error.get("message", "")
    )
    refused = Outcome("invalid", "refused", errors=["method.name: unknown"])
    (case,) = junit.report(refused, [], "http://s").getroot().iter("testcase")
    assert case.get("name") == "job" and "method.name" in (case.find("error").text or "")  # type: ignore[union-attr]


def test_server_sent_events_are_parsed() -> None:
    lines = [
        ": keep-alive",
        "",
        "id: 1",
        "event: job",
        'data: {"status": "running"}',
        "",
        "event: done",
        'data: {"status": "succeeded"}',
        "",
    ]
    assert list(events(lines)) == [
        ("job", {"status": "running"}),
        ("done", {"status": "succeeded"}),
    ]


@pytest.mark.parametrize(
    ("status", "body", "cls"),
    [
        (401, {"detail": "no key", "code": "unauthorized"}, Unauthorized),
        (404, {"detail": "job 'x' not found", "code": "not_found"}, NotFound),
        (409, {"detail": "used", "code": "idempotency_conflict", "job_id": "j"}, Conflict),
        (
            422,
            {"detail": [{"loc": "method.name", "msg": "unknown"}], "message": "m"},
            InvalidRequest,
        ),
        (500, {"detail": "internal error (reference abc)", "code": "internal_error"}, ServerError),
    ],
)
def test_http_errors_map_to_exceptions(status: int, body: dict[str, Any], cls: type) -> None:
    exc = to_error(httpx.Response(status, json=body))
    assert type(exc) is cls and exc.status_code == status
    if cls is InvalidRequest:
        assert [str(e) for e in exc.errors] == ["method.name: unknown"]  # type: ignore[attr-defined]
    if cls is Conflict:
        assert exc.job_id == "j"  # type: ignore[attr-defined]


@pytest.mark.parametrize("name", ["github-actions.yml", "gitlab-ci.yml"])
def test_the_ci_examples_submit_gate_report_and_publish(name: str) -> None:
    text = (ROOT / "examples" / "ci" / name).read_text()
    assert isinstance(yaml.safe_load(text), dict)
    for needed in ("distill submit", "--idempotency-key", "--max-gap", "--junit", "--download"):
        assert needed in text, needed
    assert "DISTILLERY_TOKEN" in text and "DISTILLERY_URL" in text


def test_admin_commands_create_list_and_revoke_keys(tmp_path: Path) -> None:
    runner = CliRunner()
    where = ["--data-dir", str(tmp_path / "data")]
    env = {"DISTILLERY_DATABASE_URL": ""}  # the embedded SQLite database under --data-dir
    made = runner.invoke(
        app, ["keys", "create", "--project", "vision", "--name", "ci", *where], env=env
    )
    assert made.exit_code == 0, made.stderr
    key = made.stdout.strip()
    assert key.startswith("dk_") and "only time it is shown" in made.stderr
    listed = runner.invoke(app, ["keys", "list", "--json", *where], env=env)
    (item,) = json.loads(listed.stdout)
    assert (item["project"], item["name"], item["revoked_at"]) == ("vision", "ci", None)
    assert key not in listed.stdout and key.startswith(item["prefix"])

    engine = make_engine(f"sqlite:///{tmp_path / 'data' / 'distillery.db'}")
    with Session(engine) as s:
        assert s.query(ApiKey).one().key_hash == hash_key(key)
        assert authenticate(s, key) is not None

    assert runner.invoke(app, ["keys", "revoke", item["id"][:8], *where], env=env).exit_code == 0
    with Session(engine) as s:
        assert authenticate(s, key) is None
    engine.dispose()
    assert runner.invoke(app, ["keys", "revoke", "nothing", *where], env=env).exit_code == 2

    secret = runner.invoke(app, ["projects", "webhook-secret", "vision", *where], env=env)
    assert secret.exit_code == 0 and secret.stdout.startswith("whsec_")
    projects = runner.invoke(app, ["projects", "list", *where], env=env)
    assert "vision" in projects.stdout and "own" in projects.stdout
