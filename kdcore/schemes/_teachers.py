"""Getting one static teacher ready, shared by the single- and multi-teacher schemes: load it
from its file, or train it inside the job first; either way it comes back frozen, fed the inputs
it expects (`teacher.inputs`), and checked on the evaluation split before anyone learns from it
(`check_teacher`)."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import torch
from torch import nn

from kdcore.build import build_arch, fingerprint
from kdcore.callbacks import EpochRecord
from kdcore.errors import InputError
from kdcore.features import check_layers
from kdcore.methods import registry as methods
from kdcore.models.inputs import with_inputs
from kdcore.models.loaders import load_teacher
from kdcore.models.outputs import with_logits
from kdcore.schemes.base import JobState
from kdcore.spec import TeacherSpec
from kdcore.train import fit, freeze

#: A teacher more than this many points below `teacher.expected_accuracy` stops the job.
EXPECTED_TOLERANCE = 10.0


@dataclasses.dataclass
class ResolvedTeacher:
    model: nn.Module
    history: list[EpochRecord]
    #: accuracy on the evaluation split, as the report keeps it (measured once, by the check)
    accuracy: float


def resolve_teacher(
    job: JobState,
    teacher: TeacherSpec,
    layers: Sequence[str],
    *,
    field: str,
    stage: str,
) -> ResolvedTeacher:
    """The teacher `teacher` describes, frozen, its training history (empty when loaded) and
    its accuracy. `layers` (the teacher modules the method reads) are checked before any
    training; a teacher that cannot teach (`check_teacher`) stops the job."""
    data, spec = job.data, job.spec
    example = data.x_train[:2]
    if teacher.source != "train":
        model = load_teacher(teacher, data.input_shape, data.num_classes, field=field)
        model = with_inputs(model, teacher.input_mode, data.normalization, data.input_shape)
        check_layers(model, layers, "method.teacher_layers", example)
        accuracy = job.accuracy(model)
        check_teacher(job, teacher, accuracy, field)
        return ResolvedTeacher(model, [], accuracy)
    assert teacher.arch is not None and teacher.train is not None
    if data.y_train_all is not None:
        data = dataclasses.replace(data, y_train=data.y_train_all)
    if data.n_labeled == 0:
        raise InputError(
            f"{field}.train", "training a teacher needs labelled rows; the data has none"
        )
    model = build_arch(teacher.arch, teacher.kwargs, data, f"{field}.kwargs", teacher.train.seed)
    model = with_logits(model, teacher.output, f"{field}.output", example)
    check_layers(model, layers, "method.teacher_layers", example)
    ctx = dataclasses.replace(
        job.stage(stage, fingerprint(teacher, spec.data), train=teacher.train), data=data
    )
    result = fit(model, methods.build("ce"), ctx)
    model = freeze(model)
    accuracy = job.accuracy(model)
    check_teacher(job, teacher, accuracy, field)
    return ResolvedTeacher(model, result.history, accuracy)


def chance_accuracy(y: torch.Tensor, num_classes: int) -> float:
    """Percent a model scores that always answers the most common class (at least 100 / the
    number of classes)."""
    counts = torch.bincount(y.long().cpu(), minlength=num_classes)
    return max(100.0 * float(counts.max()) / max(len(y), 1), 100.0 / num_classes)


def check_teacher(job: JobState, teacher: TeacherSpec, accuracy: float, field: str) -> None:
    """Stop the job before distilling from a teacher that cannot teach: a teacher file near
    chance on the evaluation split, or any teacher far below `expected_accuracy`."""
    data = job.data
    is_file = teacher.source != "train"
    chance = chance_accuracy(data.y_val, data.num_classes)
    near_chance = accuracy < chance + min(0.5 * chance, 10.0)
    expected = teacher.expected_accuracy
    too_low = expected is not None and accuracy < expected - EXPECTED_TOLERANCE
    if not (is_file and near_chance) and not too_low:
        return
    what = f"the teacher scores {accuracy:.1f} % on the evaluation split ({len(data.y_val)} rows)"
    if too_low:
        what += (
            f", more than {EXPECTED_TOLERANCE:g} points below {field}.expected_accuracy "
            f"({expected:g} %)"
        )
    if is_file and near_chance:
        what += f", about chance (always answering the most common class scores {chance:.1f} %)"
    if not is_file:
        raise InputError(
            field,
            f"{what}. Trained in the job, it learned too little: train it longer or larger "
            f"({field}.train, {field}.kwargs), or lower {field}.expected_accuracy",
        )
    gets = teacher.input_mode if data.normalization is not None else "raw"
    other = "normalized" if gets == "raw" else "raw"
    if data.normalization is None:
        inputs_hint = (
            "it receives the data as the file holds it (data.normalize is false); if it was "
            "trained on standardised inputs, set data.normalize: true and "
            f"{field}.inputs: normalized"
        )
    else:
        inputs_hint = (
            f"it receives {gets} inputs ({field}.inputs: {teacher.input_mode}); if it was "
            f"trained on {other} inputs, set {field}.inputs: {other}"
        )
    raise InputError(
        field,
        f"{what}, so distilling from it would teach the student nothing. Likely causes: "
        f"wrong input preprocessing ({inputs_hint}); its classes are in another order than "
        "the data's labels (label i must be the teacher's output i); or it was trained for "
        "other data",
    )
