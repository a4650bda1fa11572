"""`report.json` of `distill run`, `GET /v1/jobs/{id}` and the SDK's `Job.evaluation` come from
one model, `kdcore.report.Report` (its `evaluation` summary): every field of that model appears,
with the same value, in all three, so a field added to it appears everywhere without another
declaration."""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import yaml
from typer.testing import CliRunner

from client.cli import app
from client.sdk import Distillery
from kdcore.report import Evaluation, Report

from .conftest import Service, spec


def test_every_evaluation_field_reaches_report_json_the_api_and_the_sdk(
    service: Service, tmp_path: Path
) -> None:
    body = spec(export=["safetensors"], evaluate={"baseline": True, "latency_runs": 1})
    fields = set(Evaluation.model_fields)
    assert {"student_accuracy", "gap", "baseline_accuracy", "dynamic_teacher_ratio"} <= fields

    # distill run: report.json carries the summary the model computes
    path = tmp_path / "spec.yaml"
    path.write_text(yaml.safe_dump(body))
    result = CliRunner().invoke(app, ["run", str(path), "--out", str(tmp_path / "out"), "-q"])
    assert result.exit_code == 0, result.output
    local = json.loads((tmp_path / "out" / "report.json").read_text())
    assert set(local["evaluation"]) == fields
    assert Report.model_validate(local).evaluation.model_dump() == local["evaluation"]

    # the service: the same spec, run by the worker
    with Distillery(service.url, service.token_a) as d:
        job = d.submit(body).wait(timeout=300, poll=0.2)
        assert job.status == "succeeded", job.error_message
        api = httpx.get(
            f"{service.url}/v1/jobs/{job.id}",
            headers={"Authorization": f"Bearer {service.token_a}"},
        ).json()["evaluation"]
        stored = job.report()
    assert fields <= set(api) and set(api) - fields == {"created_at"}
    assert {k: api[k] for k in fields} == stored["evaluation"]
    sdk = job.evaluation
    assert isinstance(sdk, Evaluation)
    assert sdk.model_dump() == {k: api[k] for k in fields}
    assert sdk.baseline_accuracy is not None and local["evaluation"]["baseline_accuracy"]
