"""One distillation job from spec to report: data → teacher → (baseline) → distill → evaluate →
export → gates. The CLI and the worker both call `run`; only their callbacks differ."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import platform
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from pydantic import BaseModel
from torch import nn

from kdcore import evaluate
from kdcore.callbacks import Callbacks
from kdcore.checkpoint import CheckpointStore
from kdcore.data import load_data
from kdcore.data.augment import make_augment
from kdcore.data.dataset import Dataset
from kdcore.errors import InputError
from kdcore.export import export_student
from kdcore.features import check_layers
from kdcore.gates import check_gates
from kdcore.methods import registry as methods
from kdcore.models.loaders import load_state_dict_file, load_teacher, load_weights
from kdcore.models.registry import build_model
from kdcore.spec import JobSpec
from kdcore.train import fit, freeze, select_device


class Timer:
    """Seconds spent per stage, for the report."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}

    @contextmanager
    def stage(self, name: str) -> Iterator[None]:
        start = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[name] = round(time.perf_counter() - start, 3)


def fingerprint(*parts: BaseModel) -> str:
    """A digest of the spec sections that shape a stage: its checkpoint is reused only by a run
    with the same sections (a changed student does not retrain an unchanged teacher)."""
    blob = json.dumps([p.model_dump(mode="json") for p in parts], sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()


def _build(arch: str, kwargs: dict[str, Any], data: Dataset, field: str, seed: int) -> nn.Module:
    torch.manual_seed(seed)
    try:
        return build_model(arch, data.input_shape, data.num_classes, **kwargs)
    except (ValueError, RuntimeError) as exc:
        raise InputError(
            field, f"cannot build {arch!r} for input {data.input_shape}: {exc}"
        ) from None


def build_student(spec: JobSpec, data: Dataset) -> nn.Module:
    """The student, identically initialised for the baseline and the distillation run."""
    model = _build(spec.student.arch, spec.student.kwargs, data, "student.kwargs", spec.train.seed)
    if spec.student.checkpoint:
        state = load_state_dict_file(spec.student.checkpoint, field="student.checkpoint")
        load_weights(model, state, "student.checkpoint", what=spec.student.arch)
    return model


def resolve_teacher(
    spec: JobSpec,
    data: Dataset,
    callbacks: Callbacks,
    checkpoints: CheckpointStore | None,
    layers: Sequence[str] = (),
) -> tuple[nn.Module, list[dict]]:
    """Load the teacher from its file, or train it here first; returns it frozen. `layers` (the
    teacher modules the method reads) are checked before any training."""
    t = spec.teacher
    example = data.x_train[:2]
    if t.source != "train":
        teacher = load_teacher(t, data.input_shape, data.num_classes)
        check_layers(teacher, layers, "method.teacher_layers", example)
        return teacher, []
    assert t.arch is not None and t.train is not None
    if data.y_train_all is not None:
        data = dataclasses.replace(data, y_train=data.y_train_all)
    if data.n_labeled == 0:
        raise InputError(
            "teacher.train", "training a teacher needs labelled rows; the data has none"
        )
    teacher = _build(t.arch, t.kwargs, data, "teacher.kwargs", t.train.seed)
    check_layers(teacher, layers, "method.teacher_layers", example)
    result = fit(
        teacher,
        methods.build("ce"),
        data,
        t.train,
        stage="teacher",
        augment=make_augment(spec.data.augment),
        callbacks=callbacks,
        checkpoints=checkpoints,
        fingerprint=fingerprint(spec.teacher, spec.data),
    )
    return freeze(teacher), [r.to_dict() for r in result.history]


def _summary(model: nn.Module, data: Dataset, spec: JobSpec) -> dict[str, Any]:
    s = evaluate.summarize(
        model,
        data.x_val,
        data.y_val,
        latency_batch_size=spec.evaluate.latency_batch_size,
        runs=spec.evaluate.latency_runs,
    )
    return {
        "accuracy": round(s.accuracy, 4),
        "params": s.params,
        "size_bytes": s.size_bytes,
        "latency_ms": round(s.latency_ms, 4),
    }


def run(
    spec: JobSpec,
    out_dir: str | Path,
    callbacks: Callbacks | None = None,
    checkpoints: CheckpointStore | None = None,
) -> dict[str, Any]:
    """Run the whole job, write `out_dir/report.json` and the artifacts; return the report."""
    cb = callbacks or Callbacks()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    timer = Timer()
    device = select_device(spec.train.device)

    with timer.stage("data"):
        data = load_data(spec.data)
    augment = make_augment(spec.data.augment)
    method = methods.build(spec.method.name, spec.method.model_extra)
    check_layers(
        build_student(spec, data),
        method.student_layers(),
        "method.student_layers",
        data.x_train[:2],
    )
    with timer.stage("teacher"):
        teacher, teacher_history = resolve_teacher(
            spec, data, cb, checkpoints, method.teacher_layers()
        )

    baseline = None
    if spec.evaluate.baseline:
        with timer.stage("baseline"):
            scratch = build_student(spec, data)
            res = fit(
                scratch,
                methods.build("ce"),
                data,
                spec.train,
                stage="baseline",
                augment=augment,
                callbacks=cb,
                checkpoints=checkpoints,
                fingerprint=fingerprint(spec.student, spec.data, spec.train),
            )
            baseline = {
                "accuracy": round(res.history[-1].student_accuracy, 4),
                "best_accuracy": round(res.best_accuracy, 4),
                "history": [r.to_dict() for r in res.history],
            }

    with timer.stage("distill"):
        student = build_student(spec, data)
        result = fit(
            student,
            method,
            data,
            spec.train,
            stage="distill",
            teacher=teacher,
            augment=augment,
            callbacks=cb,
            checkpoints=checkpoints,
            fingerprint=fingerprint(spec.student, spec.data, spec.train, spec.method, spec.teacher),
        )

    with timer.stage("evaluate"):
        cb.on_stage_start("evaluate", 1, 2)
        teacher_summary = _summary(teacher.cpu(), data, spec)
        cb.on_step("evaluate", 1, 1, 0.0)
        student_summary = _summary(student.cpu(), data, spec)
        cb.on_step("evaluate", 1, 2, 0.0)
        cb.on_stage_end("evaluate")

    with timer.stage("export"):
        cb.on_stage_start("export", 1, 1)
        config = {
            "name": spec.name,
            "arch": spec.student.arch,
            "kwargs": spec.student.kwargs,
            "input_shape": list(data.input_shape),
            "num_classes": data.num_classes,
            "normalization": data.normalization,
        }
        artifacts = export_student(student, spec.export, out, data.x_val[:8], config)
        cb.on_step("export", 1, 1, 0.0)
        cb.on_stage_end("export")

    gap = teacher_summary["accuracy"] - student_summary["accuracy"]
    report: dict[str, Any] = {
        "name": spec.name,
        "method": {"name": spec.method.name, **spec.method.params().model_dump()},
        "teacher": {
            "source": spec.teacher.source,
            "arch": spec.teacher.arch,
            **teacher_summary,
            "history": teacher_history,
        },
        "student": {
            "arch": spec.student.arch,
            **student_summary,
            "best_accuracy": round(result.best_accuracy, 4),
        },
        "baseline": baseline,
        "gap": round(gap, 4),
        "compression": round(teacher_summary["params"] / max(student_summary["params"], 1), 3),
        "gates": check_gates(spec.gates, teacher_summary["accuracy"], student_summary["accuracy"]),
        "artifacts": [a.to_dict() for a in artifacts],
        "history": [r.to_dict() for r in result.history],
        "data": {
            "name": data.name,
            "input_shape": list(data.input_shape),
            "num_classes": data.num_classes,
            "n_train": len(data.x_train),
            "n_labeled": data.n_labeled,
            "n_val": len(data.x_val),
        },
        "teacher_cache": result.teacher_cache_used,
        "device": str(device),
        "timings": {**timer.seconds, "total": round(sum(timer.seconds.values()), 3)},
        "versions": {"torch": torch.__version__, "python": platform.python_version()},
        "spec": spec.model_dump(mode="json"),
    }
    write_json(out / "report.json", report)
    return report


def write_json(path: Path, obj: Any) -> None:
    """Write atomically: a reader never sees half a report."""
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(obj, indent=2))
    os.replace(tmp, path)
