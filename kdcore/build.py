"""Building the models a job trains, and fingerprinting the spec sections that shape a stage.

Below the schemes and the pipeline (both use it), so nothing has to import upward to build a
student.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

import torch
from pydantic import BaseModel
from torch import nn

from kdcore.data.dataset import Dataset
from kdcore.errors import InputError
from kdcore.models.loaders import load_state_dict_file, load_weights
from kdcore.models.outputs import with_logits
from kdcore.models.registry import build_model
from kdcore.spec import JOB_PREFIX, JobSpec


def fingerprint(*parts: BaseModel) -> str:
    """A digest of the spec sections that shape a stage: its checkpoint is reused only by a run
    with the same sections (a changed student does not retrain an unchanged teacher)."""
    blob = json.dumps([p.model_dump(mode="json") for p in parts], sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()


def build_arch(
    arch: str, kwargs: dict[str, Any], data: Dataset, field: str, seed: int
) -> nn.Module:
    """A zoo architecture for `data`, initialised from `seed`; a bad kwarg is an error on
    `field`."""
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
        build_arch(a.arch, a.kwargs, data, f"assistants.{i}.kwargs", spec.train.seed)
        for i, a in enumerate(spec.assistants)
    ]


def build_student(spec: JobSpec, data: Dataset) -> nn.Module:
    """The student, identically initialised for the baseline and the distillation run."""
    model = build_arch(
        spec.student.arch, spec.student.kwargs, data, "student.kwargs", spec.train.seed
    )
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
