"""Teacher assistants (Mirzadeh et al. 2020, "Improved Knowledge Distillation via Teacher
Assistant"): for a large capacity gap, a chain teacher → assistants[0] → ... → student.

Every link is the spec's `method` trained with the spec's `train` settings: assistant k learns
from the model before it (the teacher, as the distill stage would use it, or assistant k−1,
frozen in eval mode), and the student then learns from the last assistant. The links are the
stages `assistant1`, `assistant2`, ...; each is checkpointed under a fingerprint of everything
upstream of it (teacher(s), earlier assistants, data, train, method), so a resumed job skips the
finished links and a changed upstream retrains them. With no assistants the chain is empty and
the student learns from the teacher exactly as in plain distillation.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from pydantic import BaseModel
from torch import Tensor, nn

from kdcore.callbacks import Callbacks
from kdcore.checkpoint import CheckpointStore
from kdcore.data.dataset import Dataset
from kdcore.errors import InputError
from kdcore.features import check_layers
from kdcore.methods import registry as methods
from kdcore.methods.base import Method
from kdcore.spec import AssistantSpec, JobSpec
from kdcore.train import Augment, FitResult, fit, freeze


@dataclass
class Link:
    """One trained assistant."""

    spec: AssistantSpec
    model: nn.Module
    result: FitResult


@dataclass
class ChainEnd:
    """Who teaches the student: the last assistant (or the teacher when there is none), with
    the mode and caching the student's stage uses for it."""

    teacher: nn.Module | None
    mode: str
    cache: bool
    links: list[Link]


def check_assistant_layers(
    assistants: Sequence[nn.Module], method: Method, example: Tensor
) -> None:
    """An assistant is the student of one link and the teacher of the next, so a feature method
    needs both its student and its teacher layers on every assistant; checked before training."""
    for i, model in enumerate(assistants):
        for role, layers in (
            ("student_layers", method.student_layers()),
            ("teacher_layers", method.teacher_layers()),
        ):
            try:
                check_layers(model, layers, f"method.{role}", example)
            except InputError as exc:
                raise InputError(
                    f"assistants.{i}.arch",
                    f"an assistant is taught and then teaches, so it needs the layers "
                    f"method.{role} names: {exc.message}",
                ) from None


def train_chain(
    spec: JobSpec,
    data: Dataset,
    assistants: Sequence[nn.Module],
    teacher: nn.Module | None,
    *,
    teacher_mode: str,
    cache_teacher: bool,
    upstream: Sequence[BaseModel],
    augment: Augment | None,
    callbacks: Callbacks,
    checkpoints: CheckpointStore | None,
) -> ChainEnd:
    """Distil each of `assistants` (built from `spec.assistants`, in order) from the model before
    it. `teacher_mode` and `cache_teacher` apply to the real teacher; `upstream` are the spec
    sections that shape the teacher (for the fingerprints)."""
    from kdcore.pipeline import fingerprint  # the pipeline imports this module

    end = ChainEnd(teacher, teacher_mode, cache_teacher, [])
    parts = list(upstream)
    for i, (entry, model) in enumerate(zip(spec.assistants, assistants, strict=True)):
        result = fit(
            model,
            methods.build(spec.method.name, spec.method.model_extra),
            data,
            spec.train,
            stage=f"assistant{i + 1}",
            teacher=end.teacher,
            augment=augment,
            callbacks=callbacks,
            checkpoints=checkpoints,
            fingerprint=fingerprint(entry, spec.data, spec.train, spec.method, *parts),
            teacher_mode=end.mode,
            cache_teacher=end.cache,
        )
        end.links.append(Link(entry, model, result))
        parts.append(entry)
        end.teacher, end.mode, end.cache = freeze(model), "eval", True
    return end
