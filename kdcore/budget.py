"""Holding a job's models to its budget (`kdcore.limits.Limits`) before anything is allocated.

Every model the spec names by architecture is estimated on the meta device (kdcore/estimate.py)
for the data's row shape and class count. Then:

- parameters: each model against `max_model_params`, where what trains together counts as one
  (the student scheme's `trainee_scale`: DML's peers, GPD's dynamic teacher);
- memory: each training stage against `max_training_memory_bytes`, that is the model it trains
  (weights, gradients, optimizer state, and the activations kept for the backward pass at the
  stage's batch size) plus the frozen models teaching it (weights, their largest activation);
  and the evaluation, each model's forward at the evaluation batch size.

An error names what to change: the model's kwargs when it is too large, or when even a batch of
one does not fit; else the batch size, with the largest one that fits. Float32 throughout (mixed
precision only ever lowers it); teachers given as TorchScript or ONNX files carry their own
architecture and are not estimated, nor is a model the meta device cannot build (logged; the
worker's real build then says what is wrong, if anything), nor the stages it takes part in.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

from kdcore.errors import InputError
from kdcore.estimate import ModelSize, Unestimable, model_size
from kdcore.limits import Limits
from kdcore.spec import JobSpec, teacher_specs

BYTES = 4  # float32
OPTIMIZER_STATES = {"sgd": 1, "adam": 2, "adamw": 2}
SAVED_FOR_BACKWARD = 2  # the activations a backward pass needs, and their gradients
LIVE_AT_INFERENCE = 2  # a layer's input and its output
EVAL_BATCH = 512  # the batch of kdcore.evaluate.predict_logits (accuracy, teacher-output cache)

FieldErrors = list[tuple[str, str]]
log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Cost:
    """Bytes a stage needs: `fixed` whatever the batch, plus `per_row` for each row of it."""

    fixed: int
    per_row: int

    def at(self, batch: int) -> int:
        return self.fixed + self.per_row * batch

    def __add__(self, other: Cost) -> Cost:
        return Cost(self.fixed + other.fixed, self.per_row + other.per_row)


@dataclass(frozen=True)
class Model:
    """One model of the job: the spec path of its section, and its estimated size (`scale`
    copies of it when they train together)."""

    loc: str
    arch: str
    size: ModelSize
    scale: int = 1
    why_scaled: str = ""

    @property
    def params(self) -> int:
        return self.size.params * self.scale

    def described(self) -> str:
        what = f"{self.arch} with these kwargs"
        return f"{what} (×{self.scale} {self.why_scaled})" if self.scale > 1 else what

    def training(self, optimizer: str) -> Cost:
        copies = 2 + OPTIMIZER_STATES.get(optimizer, 2)  # weights, gradients, optimizer state
        per_row = self.size.activations * self.scale * BYTES * SAVED_FOR_BACKWARD
        return Cost(self.params * BYTES * copies, per_row)

    def inference(self) -> Cost:
        per_row = self.size.peak * self.scale * BYTES * LIVE_AT_INFERENCE
        return Cost(self.params * BYTES, per_row)


@dataclass(frozen=True)
class Stage:
    """A training stage: what it trains, who teaches it, at which batch size."""

    name: str
    trains: Model
    batch: int
    batch_field: str
    optimizer: str
    teachers: list[Model] = field(default_factory=list)

    def cost(self) -> Cost:
        total = self.trains.training(self.optimizer)
        for t in self.teachers:
            total = total + t.inference()
        return total


def spec_size_errors(spec: JobSpec, limits: Limits) -> FieldErrors:
    """At submit (`parse_spec`): the data's sizes taken together, then, when the spec alone
    fixes the data's shape (built-in sets), every model against the budget."""
    from kdcore.data.sizes import size_errors, static_shape

    errors = size_errors(spec.data)
    shape = static_shape(spec.data)
    if errors or shape is None:
        return errors
    return budget_errors(spec, shape[0], shape[1], limits)


def check_budget(
    spec: JobSpec, input_shape: tuple[int, ...], num_classes: int, limits: Limits
) -> None:
    """In the pipeline, once the data is read: raise `InputError` for the first excess."""
    errors = budget_errors(spec, input_shape, num_classes, limits)
    if errors:
        raise InputError(*errors[0])


def budget_errors(
    spec: JobSpec, input_shape: tuple[int, ...], num_classes: int, limits: Limits
) -> FieldErrors:
    """Every model of `spec` for rows of `input_shape` against `limits`; one error per field."""
    models, errors = _models(spec, input_shape, num_classes)
    if errors:
        return errors
    for m in models.values():
        if m.params > limits.max_model_params:
            errors.append(
                (
                    f"{m.loc}.kwargs",
                    f"{m.described()} has {m.params:,} parameters, above the limit of "
                    f"{limits.max_model_params:,} per model (max_model_params); use smaller layers",
                )
            )
    for stage in _stages(spec, models):
        excess = _stage_error(stage, limits.max_training_memory_bytes)
        if excess is not None:
            errors.append(excess)
    errors += _evaluation_errors(spec, list(models.values()), limits.max_training_memory_bytes)
    return _first_per_field(errors)


def _models(
    spec: JobSpec, input_shape: tuple[int, ...], num_classes: int
) -> tuple[dict[str, Model], FieldErrors]:
    """Every model the spec names by architecture, by spec path; errors for those that cannot
    be built."""
    named = [(loc, t.arch, t.kwargs) for loc, t in teacher_specs(spec) if t.arch]
    named += [(f"assistants.{i}", a.arch, a.kwargs) for i, a in enumerate(spec.assistants)]
    named.append(("student", spec.student.arch, spec.student.kwargs))
    models: dict[str, Model] = {}
    errors: FieldErrors = []
    for loc, arch, kwargs in named:
        try:
            models[loc] = Model(loc, arch, model_size(arch, kwargs, input_shape, num_classes))
        except ValueError as exc:
            errors.append((f"{loc}.kwargs", str(exc)))
        except Unestimable as exc:
            log.warning("%s is not held to the budget: no meta-device estimate (%s)", loc, exc)
    scale, why = _trainee_scale(spec)
    if "student" in models and scale > 1:
        student = models["student"]
        models["student"] = Model("student", student.arch, student.size, scale, why)
    return models, errors


def _trainee_scale(spec: JobSpec) -> tuple[int, str]:
    """How many student-sized models the distill stage trains at once, and why."""
    from kdcore.schemes import registry as schemes
    from kdcore.schemes.base import StudentScheme

    for scheme in schemes.active(spec):
        if isinstance(scheme, StudentScheme):
            return scheme.trainee_scale(spec), f"for method {spec.method.name}"
    return 1, ""


def _stages(spec: JobSpec, models: dict[str, Model]) -> list[Stage]:
    """The training stages whose trained model is known, with who (known) teaches each."""
    stages: list[Stage] = []
    teachers = [models[loc] for loc, _ in teacher_specs(spec) if loc in models]
    for loc, t in teacher_specs(spec):
        if t.train is not None and loc in models:
            stages.append(
                Stage(
                    f"training {loc}",
                    models[loc],
                    t.train.batch_size,
                    f"{loc}.train.batch_size",
                    t.train.optimizer.name,
                )
            )
    train, teaching = spec.train, teachers
    for i in range(len(spec.assistants)):
        assistant = models.get(f"assistants.{i}")
        if assistant is None:
            teaching = []
            continue
        stages.append(
            Stage(
                f"training assistants.{i}",
                assistant,
                train.batch_size,
                "train.batch_size",
                train.optimizer.name,
                teaching,
            )
        )
        teaching = [assistant]
    student = models.get("student")
    if student is None:
        return stages
    stages.append(
        Stage(
            "the distill stage",
            student,
            train.batch_size,
            "train.batch_size",
            train.optimizer.name,
            teaching,
        )
    )
    if spec.generations > 1:
        one = Model("student", student.arch, student.size)
        stages.append(
            Stage(
                "a born-again generation",
                one,
                train.batch_size,
                "train.batch_size",
                train.optimizer.name,
                [one],
            )
        )
    return stages


def _stage_error(stage: Stage, limit: int) -> tuple[str, str] | None:
    """What to change when the stage does not fit in `limit` bytes."""
    cost = stage.cost()
    need = cost.at(stage.batch)
    if need <= limit:
        return None
    if cost.at(1) > limit:
        largest = max(
            [(stage.trains.training(stage.optimizer).at(1), stage.trains)]
            + [(t.inference().at(1), t) for t in stage.teachers],
            key=lambda pair: pair[0],
        )[1]
        return (
            f"{largest.loc}.kwargs",
            f"{stage.name} needs about {_bytes(cost.at(1))} even at batch size 1 (weights, "
            f"gradients, optimizer state and activations of {largest.described()}), above the "
            f"limit of {_bytes(limit)} (max_training_memory_bytes); use a smaller model",
        )
    fits = (limit - cost.fixed) // cost.per_row
    return (
        stage.batch_field,
        f"{stage.name} at batch size {stage.batch:,} needs about {_bytes(need)} (weights, "
        f"gradients, optimizer state and activations), above the limit of {_bytes(limit)} "
        f"(max_training_memory_bytes); use a batch size of at most {fits:,}",
    )


def _evaluation_errors(spec: JobSpec, models: list[Model], limit: int) -> FieldErrors:
    """Each model's forward on evaluation batches (and the latency batch, when larger)."""
    latency = spec.evaluate.latency_batch_size
    errors: FieldErrors = []
    for m in models:
        one = Model(m.loc, m.arch, m.size).inference()  # evaluated alone
        if one.at(max(EVAL_BATCH, latency)) <= limit:
            continue
        if one.at(EVAL_BATCH) <= limit:
            fits = (limit - one.fixed) // one.per_row
            errors.append(
                (
                    "evaluate.latency_batch_size",
                    f"timing {m.loc} on batches of {latency:,} needs about "
                    f"{_bytes(one.at(latency))}, above the limit of {_bytes(limit)} "
                    f"(max_training_memory_bytes); use at most {fits:,}",
                )
            )
        else:
            errors.append(
                (
                    f"{m.loc}.kwargs",
                    f"evaluating {m.arch} with these kwargs on batches of {EVAL_BATCH} needs "
                    f"about {_bytes(one.at(EVAL_BATCH))}, above the limit of {_bytes(limit)} "
                    "(max_training_memory_bytes); use a smaller model",
                )
            )
    return errors


def _first_per_field(errors: FieldErrors) -> FieldErrors:
    seen: set[str] = set()
    out: FieldErrors = []
    for loc, msg in errors:
        if loc not in seen:
            seen.add(loc)
            out.append((loc, msg))
    return out


def _bytes(n: int) -> str:
    for unit, size in (("TiB", 1024**4), ("GiB", 1024**3), ("MiB", 1024**2), ("KiB", 1024)):
        if n >= size:
            return f"{n / size:.1f} {unit}"
    return f"{n} bytes"
