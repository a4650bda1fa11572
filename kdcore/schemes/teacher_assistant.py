"""Teacher assistants (Mirzadeh et al. 2020, "Improved Knowledge Distillation via Teacher
Assistant"): for a large capacity gap, a chain teacher → assistants[0] → ... → student.

Every link is the spec's `method` trained with the spec's `train` settings: assistant k learns
from the model before it (the teacher, as the distill stage would use it, or assistant k−1,
frozen in eval mode), and the student then learns from the last assistant. The links are the
stages `assistant1`, `assistant2`, ...; each is checkpointed under a fingerprint of everything
upstream of it (teacher(s), earlier assistants, data, train, method), so a resumed job skips the
finished links and a changed upstream retrains them. With no assistants the scheme does not
apply and the student learns from the teacher exactly as in plain distillation.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial
from typing import Any, ClassVar

from torch import nn

from kdcore.build import build_arch, build_assistants, fingerprint
from kdcore.errors import InputError
from kdcore.features import check_layers
from kdcore.schemes.base import JobState, Scheme, Stage, register
from kdcore.spec import AssistantSpec, JobSpec
from kdcore.train import FitResult, Teaching, fit, freeze


@dataclass
class Link:
    """One trained assistant."""

    spec: AssistantSpec
    model: nn.Module
    result: FitResult


@register("teacher_assistant")
class TeacherAssistants(Scheme):
    name: ClassVar[str] = "teacher_assistant"
    order: ClassVar[int] = 30

    def applies(self, spec: JobSpec) -> bool:
        return bool(spec.assistants)

    def plan(self, spec: JobSpec) -> list[Stage]:
        return [
            Stage(
                f"assistant{i + 1}",
                spec.train.epochs,
                partial(self.train_link, i=i),
                timing="assistants",
            )
            for i in range(len(spec.assistants))
        ]

    def check(self, job: JobState) -> None:
        """An assistant is the student of one link and the teacher of the next, so a feature
        method needs both its student and its teacher layers on every assistant."""
        example = job.data.x_train[:2]
        method = job.method
        for i, model in enumerate(build_assistants(job.spec, job.data)):
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

    def train_link(self, job: JobState, i: int) -> None:
        """Distil assistant `i` from the model before it; it then teaches the next stage."""
        spec = job.spec
        entry = spec.assistants[i]
        model = build_arch(
            entry.arch, entry.kwargs, job.data, f"assistants.{i}.kwargs", spec.train.seed
        )
        parts = fingerprint(entry, spec.data, spec.train, spec.method, *job.upstream)
        result = fit(model, job.fresh_method(), job.stage(f"assistant{i + 1}", parts))
        job.scratch.setdefault(self.name, []).append(Link(entry, model, result))
        job.upstream = [*job.upstream, entry]
        job.teaching = Teaching(freeze(model), "eval", cache=True)

    def report(self, job: JobState) -> dict[str, Any]:
        return {
            "assistants": [
                {
                    "arch": link.spec.arch,
                    "kwargs": link.spec.kwargs,
                    **job.figures(link.model),
                    "best_accuracy": round(link.result.best_accuracy, 4),
                    "history": link.result.history,
                }
                for link in job.scratch[self.name]
            ]
        }
