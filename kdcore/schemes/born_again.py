"""Born-again networks (Furlanello et al. 2018, "Born Again Neural Networks", ICML): a chain of
generations of the student's own architecture.

Generation 1 is the ordinary distillation stage (`distill`: the student learns from the teacher,
or from the last teacher assistant). Generation k+1 (stage `generation<k+1>`) is a fresh student,
built and initialised exactly like generation 1, distilled with the spec's `method` and `train`
settings from generation k, frozen in eval mode. The last generation is the job's student (the
one exported); every generation's accuracy is reported. Each stage's checkpoint carries the
fingerprint of the student's distillation stage: generation k depends on exactly the sections
generation 1 does, and the stage name tells the generations apart (so raising `generations` on a
finished job trains only the new ones).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from torch import Tensor, nn

from kdcore.callbacks import Callbacks
from kdcore.checkpoint import CheckpointStore
from kdcore.data.dataset import Dataset
from kdcore.errors import InputError
from kdcore.features import check_layers
from kdcore.methods import registry as methods
from kdcore.methods.base import Method
from kdcore.spec import JobSpec
from kdcore.train import Augment, FitResult, fit, freeze


@dataclass
class Generation:
    number: int  # 1-based
    model: nn.Module
    result: FitResult


def check_generation_layers(
    spec: JobSpec, student: nn.Module, method: Method, example: Tensor
) -> None:
    """A generation teaches the next, so a feature method's teacher layers must exist on the
    student's architecture too; checked before training."""
    if spec.generations < 2:
        return
    try:
        check_layers(student, method.teacher_layers(), "method.teacher_layers", example)
    except InputError as exc:
        raise InputError(
            "generations",
            f"each generation teaches the next, so the student needs the layers "
            f"method.teacher_layers names: {exc.message}",
        ) from None


def train_generations(
    spec: JobSpec,
    data: Dataset,
    first: Generation,
    *,
    fingerprint: str,
    augment: Augment | None,
    callbacks: Callbacks,
    checkpoints: CheckpointStore | None,
) -> list[Generation]:
    """Generations 2..`spec.generations`, each distilled from the one before; returns all of
    them, `first` included. `fingerprint` is the distillation stage's."""
    from kdcore.pipeline import build_student  # the pipeline imports this module

    generations = [first]
    for number in range(2, spec.generations + 1):
        model = build_student(spec, data)
        result = fit(
            model,
            methods.build(spec.method.name, spec.method.model_extra),
            data,
            spec.train,
            stage=f"generation{number}",
            teacher=freeze(generations[-1].model),
            augment=augment,
            callbacks=callbacks,
            checkpoints=checkpoints,
            fingerprint=fingerprint,
            teacher_mode="eval",
            cache_teacher=True,
        )
        generations.append(Generation(number, model, result))
    return generations


def report_section(generations: Sequence[Generation], accuracies: Sequence[float]) -> list[dict]:
    """The report's `generations`: each generation's last-epoch and best accuracy and history."""
    return [
        {
            "generation": g.number,
            "accuracy": accuracy,
            "best_accuracy": round(g.result.best_accuracy, 4),
            "history": [r.to_dict() for r in g.result.history],
        }
        for g, accuracy in zip(generations, accuracies, strict=True)
    ]
