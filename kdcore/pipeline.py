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
from kdcore.data.augment import Augment, make_augment
from kdcore.data.dataset import Dataset
from kdcore.errors import InputError
from kdcore.export import Artifact, export_student
from kdcore.features import check_layers
from kdcore.gates import check_gates
from kdcore.methods import registry as methods
from kdcore.methods.base import Method
from kdcore.models.loaders import load_state_dict_file, load_teacher, load_weights
from kdcore.models.outputs import LogitsOutput, with_logits
from kdcore.models.registry import build_model
from kdcore.schemes import born_again, multi_teacher, mutual, teacher_assistant
from kdcore.schemes.gpd import scheme as gpd
from kdcore.schemes.gpd.trainee import GPDTrainee
from kdcore.schemes.multi_teacher import TeacherEnsemble
from kdcore.spec import JOB_PREFIX, JobSpec, MultiTeacherSpec, TeacherSpec, teacher_specs
from kdcore.train import FitResult, fit, freeze, select_device


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


def build_assistants(spec: JobSpec, data: Dataset) -> list[nn.Module]:
    """The teacher assistants, each initialised from `train.seed` like the student."""
    return [
        _build(a.arch, a.kwargs, data, f"assistants.{i}.kwargs", spec.train.seed)
        for i, a in enumerate(spec.assistants)
    ]


def build_student(spec: JobSpec, data: Dataset) -> nn.Module:
    """The student, identically initialised for the baseline and the distillation run."""
    model = _build(spec.student.arch, spec.student.kwargs, data, "student.kwargs", spec.train.seed)
    if spec.student.checkpoint and spec.student.checkpoint.startswith(JOB_PREFIX):
        raise InputError(
            "student.checkpoint",
            f"{spec.student.checkpoint} names a job of the service (only a worker resolves it); "
            "here give a file: `distill download <job id> --format safetensors`, then its path",
        )
    if spec.student.checkpoint:
        state = load_state_dict_file(spec.student.checkpoint, field="student.checkpoint")
        load_weights(model, state, "student.checkpoint", what=spec.student.arch)
    return with_logits(model, spec.student.output, "student.output", data.x_train[:2])


def resolve_teacher(
    spec: JobSpec,
    data: Dataset,
    callbacks: Callbacks,
    checkpoints: CheckpointStore | None,
    layers: Sequence[str] = (),
    *,
    teacher: TeacherSpec | None = None,
    field: str = "teacher",
    stage: str = "teacher",
) -> tuple[nn.Module, list[dict]]:
    """Load the teacher from its file, or train it here first; returns it frozen. `layers` (the
    teacher modules the method reads) are checked before any training. `teacher` (default
    `spec.teacher`), `field` and `stage` let multi-teacher jobs resolve each of `teachers`."""
    t = teacher if teacher is not None else spec.teacher
    assert t is not None
    example = data.x_train[:2]
    if t.source != "train":
        model = load_teacher(t, data.input_shape, data.num_classes, field=field)
        check_layers(model, layers, "method.teacher_layers", example)
        return model, []
    assert t.arch is not None and t.train is not None
    if data.y_train_all is not None:
        data = dataclasses.replace(data, y_train=data.y_train_all)
    if data.n_labeled == 0:
        raise InputError(
            f"{field}.train", "training a teacher needs labelled rows; the data has none"
        )
    model = _build(t.arch, t.kwargs, data, f"{field}.kwargs", t.train.seed)
    model = with_logits(model, t.output, f"{field}.output", example)
    check_layers(model, layers, "method.teacher_layers", example)
    result = fit(
        model,
        methods.build("ce"),
        data,
        t.train,
        stage=stage,
        augment=make_augment(spec.data.augment),
        callbacks=callbacks,
        checkpoints=checkpoints,
        fingerprint=fingerprint(t, spec.data),
    )
    return freeze(model), [r.to_dict() for r in result.history]


def resolve_teachers(
    spec: JobSpec,
    data: Dataset,
    callbacks: Callbacks,
    checkpoints: CheckpointStore | None,
    method: Method,
) -> tuple[nn.Module | None, list[nn.Module], list[list[dict]]]:
    """The teacher the distillation stage runs with (one teacher, an ensemble of `teachers`, or
    None when the method needs no teacher and the spec gives none), each teacher, and each
    teacher's training history. Stages: `teacher`, or `teacher1`, `teacher2`, ..."""
    if spec.teacher is not None:
        model, history = resolve_teacher(
            spec, data, callbacks, checkpoints, method.teacher_layers()
        )
        return model, [model], [history]
    if spec.teachers is None:
        return None, [], []
    settings = spec.multi_teacher or MultiTeacherSpec()
    members, histories = [], []
    for i, entry in enumerate(spec.teachers):
        model, history = resolve_teacher(
            spec,
            data,
            callbacks,
            checkpoints,
            method.teacher_layers() if i == settings.feature_teacher else (),
            teacher=multi_teacher.without_weight(entry),
            field=f"teachers.{i}",
            stage=f"teacher{i + 1}",
        )
        members.append(model)
        histories.append(history)
    ensemble = multi_teacher.build(spec, members, method.hparams, bool(method.teacher_layers()))
    return ensemble, members, histories


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


@dataclasses.dataclass
class Stages:
    """What every training stage of one job shares."""

    spec: JobSpec
    data: Dataset
    augment: Augment | None
    callbacks: Callbacks
    checkpoints: CheckpointStore | None


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
    job = Stages(spec, data, make_augment(spec.data.augment), cb, checkpoints)
    method = methods.build(spec.method.name, spec.method.model_extra)
    assistants = _check_layers_early(spec, data, method)
    with timer.stage("teacher"):
        teacher, members, histories = resolve_teachers(spec, data, cb, checkpoints, method)
    baseline = None
    if spec.evaluate.baseline:
        with timer.stage("baseline"):
            baseline = _train_baseline(job)

    teacher_parts: list[BaseModel] = [spec.teacher] if spec.teacher is not None else []
    if spec.teachers is not None:
        teacher_parts = [*spec.teachers, spec.multi_teacher or MultiTeacherSpec()]
    teacher_mode = "train" if any(t.mode == "train" for _, t in teacher_specs(spec)) else "eval"
    chain = teacher_assistant.ChainEnd(
        teacher,
        teacher_mode,
        not isinstance(teacher, TeacherEnsemble) or teacher.combine == "average",
        [],
    )
    if assistants:
        with timer.stage("assistants"):
            chain = teacher_assistant.train_chain(
                spec,
                data,
                assistants,
                teacher,
                teacher_mode=chain.mode,
                cache_teacher=chain.cache,
                upstream=teacher_parts,
                augment=job.augment,
                callbacks=cb,
                checkpoints=checkpoints,
            )
    distill_fingerprint = fingerprint(
        spec.student, spec.data, spec.train, spec.method, *teacher_parts, *spec.assistants
    )
    with timer.stage("distill"):
        trained = training_model(spec, data, method)
        result = fit(
            trained,
            method,
            data,
            _train_settings(spec, method),
            stage="distill",
            teacher=chain.teacher,
            augment=job.augment,
            callbacks=cb,
            checkpoints=checkpoints,
            fingerprint=distill_fingerprint,
            teacher_mode=chain.mode,
            cache_teacher=chain.cache,
        )
    student, peers, dynamic_teacher = trained, None, None
    if isinstance(trained, mutual.PeerGroup):  # deep mutual learning: the student is one peer
        chosen = mutual.choose_peer(trained, data, method)
        student, peers = chosen.model, chosen.report_section()
    if isinstance(trained, GPDTrainee):  # GPD: the student is cut out of its dynamic teacher
        student, dynamic_teacher = trained.student(), trained.dynamic_teacher()
    generations = [born_again.Generation(1, student, result)]
    if spec.generations > 1:
        with timer.stage("generations"):
            generations = born_again.train_generations(
                spec,
                data,
                generations[0],
                fingerprint=distill_fingerprint,
                augment=job.augment,
                callbacks=cb,
                checkpoints=checkpoints,
            )
        student, result = generations[-1].model, generations[-1].result

    with timer.stage("evaluate"):
        measured = _evaluate(job, teacher, members, histories, chain, generations)
        if dynamic_teacher is not None:
            measured.dynamic_teacher = gpd.report_section(
                method, _summary(dynamic_teacher, data, spec)
            )
    with timer.stage("export"):
        artifacts = _export(job, student, out)

    report = _report(job, measured, baseline, result, artifacts, generations)
    if peers is not None:
        report["peers"] = peers
    report.update(
        teacher_cache=result.teacher_cache_used,
        device=str(device),
        timings={**timer.seconds, "total": round(sum(timer.seconds.values()), 3)},
        versions={"torch": torch.__version__, "python": platform.python_version()},
        spec=spec.model_dump(mode="json"),
    )
    write_json(out / "report.json", report)
    return report


def training_model(spec: JobSpec, data: Dataset, method: Method) -> nn.Module:
    """What the distill stage trains: the student, DML's peer group, or GPD's trainee."""
    if mutual.is_mutual(method):
        return mutual.build_group(spec, data, method)
    if gpd.is_gpd(method):
        return gpd.build_trainee(spec, data, method)
    return build_student(spec, data)


def _train_settings(spec: JobSpec, method: Method) -> Any:
    """`train`, with GPD's gradient clip when the spec sets none (gpd.md §4)."""
    clip = getattr(method.hparams, "grad_clip", None) if gpd.is_gpd(method) else None
    if clip is None or spec.train.grad_clip is not None:
        return spec.train
    return spec.train.model_copy(update={"grad_clip": clip})


def _check_layers_early(spec: JobSpec, data: Dataset, method: Method) -> list[nn.Module]:
    """Fail on a wrong layer name (or a student GPD cannot expand) before any training;
    returns the built assistants."""
    example = data.x_train[:2]
    mutual.check_spec(spec, method)
    gpd.check_spec(spec, method)
    first_student = build_student(spec, data)
    own_model = mutual.is_mutual(method) or gpd.is_gpd(method)
    hooked = training_model(spec, data, method) if own_model else first_student
    check_layers(hooked, method.student_layers(), "method.student_layers", example)
    born_again.check_generation_layers(spec, first_student, method, example)
    assistants = build_assistants(spec, data)
    teacher_assistant.check_assistant_layers(assistants, method, example)
    return assistants


def _train_baseline(job: Stages) -> dict[str, Any]:
    """The same student, same seed and epochs, trained alone with CE: what KD is compared to."""
    spec = job.spec
    res = fit(
        build_student(spec, job.data),
        methods.build("ce"),
        job.data,
        spec.train,
        stage="baseline",
        augment=job.augment,
        callbacks=job.callbacks,
        checkpoints=job.checkpoints,
        fingerprint=fingerprint(spec.student, spec.data, spec.train),
    )
    return {
        "accuracy": round(res.history[-1].student_accuracy, 4),
        "best_accuracy": round(res.best_accuracy, 4),
        "history": [r.to_dict() for r in res.history],
    }


@dataclasses.dataclass
class Measured:
    teacher: dict[str, Any] | None
    assistants: list[dict[str, Any]]
    student: dict[str, Any]
    generation_accuracies: list[float]
    dynamic_teacher: dict[str, Any] | None = None


def _evaluate(
    job: Stages,
    teacher: nn.Module | None,
    members: list[nn.Module],
    histories: list[list[dict]],
    chain: teacher_assistant.ChainEnd,
    generations: list[born_again.Generation],
) -> Measured:
    """Accuracy, size and latency of every model the job produced, on the same held-out split."""
    spec, data, cb = job.spec, job.data, job.callbacks
    n_eval = len(members) + len(chain.links) + len(generations)
    cb.on_stage_start("evaluate", 1, n_eval)
    step = 0

    def done() -> None:
        nonlocal step
        step += 1
        cb.on_step("evaluate", 1, step, 0.0)

    summaries = []
    for member in members:
        summaries.append(_summary(member.cpu(), data, spec))
        done()
    assistant_sections = []
    for link in chain.links:
        assistant_sections.append(
            {
                "arch": link.spec.arch,
                "kwargs": link.spec.kwargs,
                **_summary(link.model.cpu(), data, spec),
                "best_accuracy": round(link.result.best_accuracy, 4),
                "history": [r.to_dict() for r in link.result.history],
            }
        )
        done()
    accuracies = []
    for g in generations[:-1]:
        accuracies.append(round(evaluate.accuracy(g.model.cpu(), data.x_val, data.y_val), 4))
        done()
    student_summary = _summary(generations[-1].model.cpu(), data, spec)
    accuracies.append(student_summary["accuracy"])
    ensemble_accuracy = None
    if isinstance(teacher, TeacherEnsemble) and teacher.combine == "average":
        ensemble_accuracy = round(evaluate.accuracy(teacher.cpu(), data.x_val, data.y_val), 4)
    cb.on_step("evaluate", 1, n_eval, 0.0)
    cb.on_stage_end("evaluate")
    teacher_section: dict[str, Any] | None = None
    if spec.teacher is not None:
        teacher_section = {
            "source": spec.teacher.source,
            "arch": spec.teacher.arch,
            **summaries[0],
            "history": histories[0],
        }
    elif spec.teachers is not None:
        teacher_section = multi_teacher.report_section(
            spec, summaries, histories, ensemble_accuracy
        )
    return Measured(teacher_section, assistant_sections, student_summary, accuracies)


def _export(job: Stages, student: nn.Module, out: Path) -> list[Artifact]:
    """Every format the spec asks for, each loaded back and compared with the eager student."""
    spec, data, cb = job.spec, job.data, job.callbacks
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


def _report(
    job: Stages,
    measured: Measured,
    baseline: dict[str, Any] | None,
    result: FitResult,
    artifacts: list[Artifact],
    generations: list[born_again.Generation],
) -> dict[str, Any]:
    """report.json's content about models: accuracies, the gap, gates, artifacts, history."""
    spec, data = job.spec, job.data
    teacher_section, student_summary = measured.teacher, measured.student
    dynamic = measured.dynamic_teacher
    teacher_acc = teacher_section["accuracy"] if teacher_section else None
    dynamic_acc = dynamic["accuracy"] if dynamic else None
    gaps = gpd.gaps(teacher_acc, dynamic_acc, student_summary["accuracy"])
    # The gap a gate judges: to the static teacher; a GPD job without one (scenario scratch or
    # finetune) measures it to its dynamic teacher, the only teacher it had.
    reference = "teacher" if teacher_section else "dynamic_teacher"
    gap = gaps["teacher_student"] if teacher_section else gaps["dynamic_student"]
    compression = (
        round(teacher_section["params"] / max(student_summary["params"], 1), 3)
        if teacher_section
        else None
    )
    return {
        "name": spec.name,
        "method": {"name": spec.method.name, **spec.method.params().model_dump()},
        "teacher": teacher_section,
        "dynamic_teacher": dynamic,
        "student": {
            "arch": spec.student.arch,
            **student_summary,
            "best_accuracy": round(result.best_accuracy, 4),
        },
        "assistants": measured.assistants,
        "generations": born_again.report_section(generations, measured.generation_accuracies),
        "baseline": baseline,
        "gap": gap,
        "gap_reference": reference,
        "gaps": gaps,
        "compression": compression,
        "gates": check_gates(spec.gates, gap, student_summary["accuracy"]),
        "artifacts": [a.to_dict() for a in artifacts],
        "history": [r.to_dict() for g in generations for r in g.result.history],
        "data": {
            "name": data.name,
            "input_shape": list(data.input_shape),
            "num_classes": data.num_classes,
            "n_train": len(data.x_train),
            "n_labeled": data.n_labeled,
            "n_val": len(data.x_val),
        },
    }


def write_json(path: Path, obj: Any) -> None:
    """Write atomically: a reader never sees half a report."""
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(obj, indent=2))
    os.replace(tmp, path)
