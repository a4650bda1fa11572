"""GPD jobs run by `execute_job` against real PostgreSQL: the evaluation row records the dynamic
teacher and the gaps (a job without a static teacher has none of the teacher numbers), and
`student.checkpoint: job:<id>` starts a fine-tuning job from an earlier job's safetensors."""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

import kdcore.build
from store.blobs import BlobStore
from store.models import Artifact, Evaluation, JobEvent, JobStatus
from worker.runner import Outcome

RunJob = Callable[..., Outcome]


def gpd_spec(name: str = "gpd", **sections: Any) -> dict[str, Any]:
    """A tiny teacher-less GPD job (scenario scratch) on digits; `sections` replace keys."""
    spec: dict[str, Any] = {
        "name": name,
        "student": {"arch": "convnet", "kwargs": {"channels": [4, 8]}},
        "data": {"source": "digits"},
        "method": {"name": "gpd", "scenario": "scratch", "ratio": 2},
        "train": {"epochs": 1, "batch_size": 64},
        "evaluate": {"latency_runs": 1, "latency_batch_size": 4},
        "export": ["safetensors"],
    }
    spec.update(sections)
    return spec


def test_teacherless_gpd_job_records_the_dynamic_teacher(jobs: Any, run_job: RunJob) -> None:
    job_id = jobs.make(gpd_spec(gates={"max_gap": 50.0}))
    outcome = run_job(job_id)
    assert outcome.status == JobStatus.succeeded, outcome

    (ev,) = jobs.rows(Evaluation, job_id)
    report = ev.report
    assert report["teacher"] is None and report["gap_reference"] == "dynamic_teacher"
    assert (ev.teacher_accuracy, ev.teacher_params, ev.teacher_latency_ms) == (None, None, None)
    assert ev.compression_ratio is None
    dynamic = report["dynamic_teacher"]
    assert ev.dynamic_teacher_accuracy == dynamic["accuracy"]
    assert ev.dynamic_teacher_params == dynamic["params"] > ev.student_params
    assert ev.dynamic_teacher_ratio == 2
    assert ev.gap_reference == "dynamic_teacher"
    assert ev.gap == report["gap"] == ev.gap_dynamic_student
    assert ev.gap == pytest.approx(ev.dynamic_teacher_accuracy - ev.student_accuracy, abs=1e-3)
    assert ev.gap_teacher_dynamic is None
    assert ev.gate_passed is True and ev.gates["checks"][0]["value"] == ev.gap

    (final,) = [e for e in jobs.rows(JobEvent, job_id) if e.status == "succeeded"]
    assert "dynamic teacher" in final.message and "None" not in final.message


def test_gpd_job_with_a_teacher_records_all_three_gaps(jobs: Any, run_job: RunJob) -> None:
    teacher = {"arch": "mlp", "kwargs": {"hidden": [32]}, "train": {"epochs": 1}}
    spec = gpd_spec(teacher=teacher, method={"name": "gpd", "ratio": 2})
    job_id = jobs.make(spec)
    assert run_job(job_id).status == JobStatus.succeeded

    (ev,) = jobs.rows(Evaluation, job_id)
    gaps = ev.report["gaps"]
    assert ev.gap_reference == "teacher"
    assert ev.teacher_accuracy == ev.report["teacher"]["accuracy"]
    assert ev.teacher_params is not None and ev.compression_ratio is not None
    assert ev.dynamic_teacher_accuracy == ev.report["dynamic_teacher"]["accuracy"]
    assert ev.gap == gaps["teacher_student"]
    assert ev.gap_teacher_dynamic == gaps["teacher_dynamic"] is not None
    assert ev.gap_dynamic_student == gaps["dynamic_student"] is not None
    assert ev.gap == pytest.approx(ev.gap_teacher_dynamic + ev.gap_dynamic_student, abs=1e-3)


def test_a_kd_job_has_no_dynamic_teacher(jobs: Any, run_job: RunJob) -> None:
    job_id = jobs.make()  # the tiny KD job
    assert run_job(job_id).status == JobStatus.succeeded
    (ev,) = jobs.rows(Evaluation, job_id)
    assert ev.gap_reference == "teacher" and ev.teacher_accuracy is not None
    assert (ev.dynamic_teacher_accuracy, ev.dynamic_teacher_ratio) == (None, None)
    assert (ev.gap_teacher_dynamic, ev.gap_dynamic_student) == (None, None)


def test_finetune_starts_from_an_earlier_jobs_safetensors(
    jobs: Any, run_job: RunJob, blobs: BlobStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    first = jobs.make(gpd_spec("first"))
    assert run_job(first).status == JobStatus.succeeded
    (weights,) = [a for a in jobs.rows(Artifact, first) if a.format == "safetensors"]

    loaded: list[tuple[str, str]] = []
    real = kdcore.build.load_state_dict_file

    def spy(path: str | Path, field: str = "checkpoint") -> Any:
        loaded.append((field, hashlib.sha256(Path(path).read_bytes()).hexdigest()))
        return real(path, field)

    monkeypatch.setattr(kdcore.build, "load_state_dict_file", spy)
    ref = f"job:{first}"
    spec = gpd_spec(
        "second",
        student={"arch": "convnet", "kwargs": {"channels": [4, 8]}, "checkpoint": ref},
        method={"name": "gpd", "scenario": "finetune", "ratio": 2},
    )
    second = jobs.make(spec)
    outcome = run_job(second)
    assert outcome.status == JobStatus.succeeded, outcome
    # the student (and nothing else) started from the first job's exported weights
    assert loaded and set(loaded) == {("student.checkpoint", weights.sha256)}
    (ev,) = jobs.rows(Evaluation, second)
    assert ev.report["spec"]["student"]["checkpoint"] == ref  # as submitted, no worker path
    assert ev.report["dynamic_teacher"]["scenario"] == "finetune"
    assert ev.gap_reference == "dynamic_teacher"


@pytest.mark.parametrize("case", ["missing", "queued", "no_safetensors"])
def test_a_bad_job_reference_fails_the_job_naming_the_field(
    jobs: Any, run_job: RunJob, case: str
) -> None:
    """The API refuses these at submission; a job already queued when the referenced job went
    away (or a spec written straight to the database) fails cleanly in the worker."""
    if case == "missing":
        ref_id = "0" * 32
    elif case == "queued":
        ref_id = jobs.make(gpd_spec("not-yet"))
    else:
        ref_id = jobs.make(gpd_spec("no-weights"), status="succeeded")
    spec = gpd_spec(
        student={"arch": "convnet", "kwargs": {"channels": [4, 8]}, "checkpoint": f"job:{ref_id}"},
        method={"name": "gpd", "scenario": "finetune"},
    )
    outcome = run_job(jobs.make(spec))
    assert (outcome.status, outcome.error_code) == (JobStatus.failed, "invalid_input")
    assert outcome.message.startswith("student.checkpoint: ")
    assert ref_id in outcome.message
    expected = {"missing": "does not exist", "queued": "queued", "no_safetensors": "safetensors"}
    assert expected[case] in outcome.message


def test_a_job_reference_is_refused_outside_student_checkpoint(jobs: Any, run_job: RunJob) -> None:
    spec = gpd_spec(
        teacher={"arch": "mlp", "checkpoint": "job:" + "0" * 32},
        method={"name": "gpd", "ratio": 2},
    )
    outcome = run_job(jobs.make(spec))
    assert (outcome.status, outcome.error_code) == (JobStatus.failed, "invalid_input")
    assert outcome.message.startswith("teacher.checkpoint: ") and "upload:<id>" in outcome.message
