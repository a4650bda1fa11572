"""Getting one static teacher ready, shared by the single- and multi-teacher schemes: load it
from its file, or train it inside the job first; either way it comes back frozen."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

from torch import nn

from kdcore.build import build_arch, fingerprint
from kdcore.callbacks import EpochRecord
from kdcore.errors import InputError
from kdcore.features import check_layers
from kdcore.methods import registry as methods
from kdcore.models.loaders import load_teacher
from kdcore.models.outputs import with_logits
from kdcore.schemes.base import JobState
from kdcore.spec import TeacherSpec
from kdcore.train import fit, freeze


def resolve_teacher(
    job: JobState,
    teacher: TeacherSpec,
    layers: Sequence[str],
    *,
    field: str,
    stage: str,
) -> tuple[nn.Module, list[EpochRecord]]:
    """The teacher `teacher` describes, frozen, and its training history (empty when loaded).
    `layers` (the teacher modules the method reads) are checked before any training."""
    data, spec = job.data, job.spec
    example = data.x_train[:2]
    if teacher.source != "train":
        model = load_teacher(teacher, data.input_shape, data.num_classes, field=field)
        check_layers(model, layers, "method.teacher_layers", example)
        return model, []
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
    return freeze(model), result.history
