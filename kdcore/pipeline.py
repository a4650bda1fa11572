"""One distillation job from spec to report: data → the plan's stages → evaluate → export →
gates. The CLI and the worker both call `run`; only their callbacks differ.

The pipeline knows no scheme: the schemes that apply to the spec (kdcore/schemes) give the
stages, check what needs a built model before any training, and each add their part of the
report.
"""

from __future__ import annotations

import json
import os
import platform
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch

from kdcore.budget import check_budget
from kdcore.callbacks import Callbacks
from kdcore.checkpoint import CheckpointStore
from kdcore.data import load_data
from kdcore.data.augment import make_augment
from kdcore.export import Artifact, export_student
from kdcore.gates import check_gates
from kdcore.limits import DEFAULT_LIMITS, Limits
from kdcore.methods import registry as methods
from kdcore.models.outputs import LogitsOutput
from kdcore.report import Report, gaps
from kdcore.schemes import registry as schemes
from kdcore.schemes.base import JobState, Scheme
from kdcore.spec import JobSpec
from kdcore.train import select_device


class Timer:
    """Seconds spent per stage group, for the report."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}

    @contextmanager
    def stage(self, name: str) -> Iterator[None]:
        start = time.perf_counter()
        try:
            yield
        finally:
            spent = self.seconds.get(name, 0.0) + time.perf_counter() - start
            self.seconds[name] = round(spent, 3)


def run(
    spec: JobSpec,
    out_dir: str | Path,
    callbacks: Callbacks | None = None,
    checkpoints: CheckpointStore | None = None,
    limits: Limits = DEFAULT_LIMITS,
) -> Report:
    """Run the whole job, write `out_dir/report.json` and the artifacts; return the report.
    Its models are held to `limits` once the data's shape is known, before any is built."""
    cb = callbacks or Callbacks()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    timer = Timer()
    device = select_device(spec.train.device)

    with timer.stage("data"):
        data = load_data(spec.data)
    check_budget(spec, data.input_shape, data.num_classes, limits)
    method = methods.build(spec.method.name, spec.method.model_extra)
    job = JobState(spec, data, method, make_augment(spec.data.augment), cb, checkpoints)
    active = schemes.active(spec)
    for scheme in active:  # everything that needs a built model, before any training
        scheme.check(job)
    for scheme in active:
        for stage in scheme.plan(spec):
            with timer.stage(stage.timing_key):
                stage.run(job)

    with timer.stage("evaluate"):
        fields = _evaluate(job, active)
    with timer.stage("export"):
        artifacts = _export(job, out)

    report = _report(job, fields, artifacts).model_copy(
        update={
            "device": str(device),
            "timings": {**timer.seconds, "total": round(sum(timer.seconds.values()), 3)},
            "versions": {"torch": torch.__version__, "python": platform.python_version()},
        }
    )
    write_report(out / "report.json", report)
    return report


def _evaluate(job: JobState, active: list[Scheme]) -> dict[str, Any]:
    """Every model the job produced, on the same held-out split: each scheme's own (teachers,
    assistants, the dynamic teacher...), every generation of the student."""
    cb = job.callbacks
    steps = len(active) + 1
    cb.on_stage_start("evaluate", 1, steps)
    fields: dict[str, Any] = {"sections": {}}
    for step, scheme in enumerate(active, start=1):
        part = scheme.report(job)
        fields["sections"].update(part.pop("sections", {}))
        fields.update(part)
        cb.on_step("evaluate", 1, step, 0.0)
    *earlier, last = job.generations
    student = {**job.figures(last.model), "arch": job.spec.student.arch}
    accuracies = [job.accuracy(g.model) for g in earlier] + [student["accuracy"]]
    fields["student"] = {**student, "best_accuracy": round(last.result.best_accuracy, 4)}
    fields["generations"] = [
        {
            "generation": g.number,
            "accuracy": accuracy,
            "best_accuracy": round(g.result.best_accuracy, 4),
            "history": g.result.history,
        }
        for g, accuracy in zip(job.generations, accuracies, strict=True)
    ]
    cb.on_step("evaluate", 1, steps, 0.0)
    cb.on_stage_end("evaluate")
    return fields


def _export(job: JobState, out: Path) -> list[Artifact]:
    """Every format the spec asks for, each loaded back and compared with the eager student."""
    spec, data, cb, student = job.spec, job.data, job.callbacks, job.student
    cb.on_stage_start("export", 1, 1)
    config = {
        "name": spec.name,
        "arch": spec.student.arch,
        "kwargs": spec.student.kwargs,
        "input_shape": list(data.input_shape),
        "num_classes": data.num_classes,
        "normalization": data.normalization,
    }
    if isinstance(student, LogitsOutput):  # rebuilt with the same output selection
        config["output"] = student.key
    artifacts = export_student(student, spec.export, out, data.x_val[:8], config)
    cb.on_step("export", 1, 1, 0.0)
    cb.on_stage_end("export")
    return artifacts


def _report(job: JobState, fields: dict[str, Any], artifacts: list[Artifact]) -> Report:
    """The report: what the schemes measured, the gap (to the static teacher; a job without one,
    GPD's scratch and finetune, measures it to its dynamic teacher, the only teacher it had),
    the gates on it, the artifacts, the history of every generation."""
    spec, data = job.spec, job.data
    teacher, dynamic, student = (
        fields.get("teacher"),
        fields.get("dynamic_teacher"),
        fields["student"],
    )
    teacher_acc = teacher["accuracy"] if teacher else None
    dynamic_acc = dynamic["accuracy"] if dynamic else None
    g = gaps(teacher_acc, dynamic_acc, student["accuracy"])
    gap = g.teacher_student if teacher else g.dynamic_student
    assert gap is not None, "a job has a static or a dynamic teacher"
    compression = round(teacher["params"] / max(student["params"], 1), 3) if teacher else None
    return Report.model_validate(
        {
            **fields,
            "name": spec.name,
            "method": {"name": spec.method.name, **spec.method.params().model_dump()},
            "gap": gap,
            "gap_reference": "teacher" if teacher else "dynamic_teacher",
            "gaps": g,
            "compression": compression,
            "gates": check_gates(spec.gates, gap, student["accuracy"]),
            "artifacts": [{**a.to_dict(), "filename": Path(a.path).name} for a in artifacts],
            "history": [r for gen in job.generations for r in gen.result.history],
            "teacher_cache": job.result.teacher_cache_used,
            "data": {
                "name": data.name,
                "input_shape": list(data.input_shape),
                "num_classes": data.num_classes,
                "n_train": len(data.x_train),
                "n_labeled": data.n_labeled,
                "n_val": len(data.x_val),
            },
            "spec": spec.model_dump(mode="json"),
        }
    )


def write_report(path: Path, report: Report) -> None:
    """Write atomically: a reader never sees half a report."""
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(report.to_json(), indent=2))
    os.replace(tmp, path)
