"""What a scheme is: one way of organising training in a job (who teaches, what trains, in how
many stages), plugged into the pipeline by one registration.

A job is a list of stages. Every registered scheme that `applies` to a spec contributes its
stages (`plan`), in the order of the schemes' `order`: the teachers (10), the baseline (20),
teacher assistants (30), the student's own training (40, exactly one student scheme applies),
later generations (50). The pipeline runs the plan over one `JobState`, the blackboard the
stages share (who teaches next, the student so far); then each scheme adds its part of the
report. `validate` runs at submit (`parse_spec`) and must not build a model; `check` runs in the
worker before any training and may.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, ClassVar

from pydantic import BaseModel
from torch import nn

from kdcore import evaluate
from kdcore.build import fingerprint
from kdcore.callbacks import Callbacks
from kdcore.checkpoint import CheckpointStore
from kdcore.data.augment import Augment
from kdcore.data.dataset import Dataset
from kdcore.features import check_layers
from kdcore.methods import registry as methods
from kdcore.methods.base import Method
from kdcore.registry import Registry
from kdcore.spec import JobSpec, TrainSpec
from kdcore.train import NO_TEACHER, FitResult, StageContext, Teaching, fit

#: (field path, message) pairs, as `SpecError` holds them.
FieldErrors = list[tuple[str, str]]


@dataclass
class Generation:
    """One student trained in sequence: the distill stage's is 1, born-again adds more."""

    number: int  # 1-based
    model: nn.Module
    result: FitResult


@dataclass
class JobState:
    """One job's shared state: what every stage needs, and what earlier stages left."""

    spec: JobSpec
    data: Dataset
    method: Method
    augment: Augment | None
    callbacks: Callbacks
    checkpoints: CheckpointStore | None
    #: who teaches the next training stage, and the spec sections that shaped it (fingerprints)
    teaching: Teaching = NO_TEACHER
    upstream: list[BaseModel] = field(default_factory=list)
    #: the students trained in sequence; the last one is the job's student
    generations: list[Generation] = field(default_factory=list)
    #: what a scheme keeps between its stages and its report (keyed by the scheme's name)
    scratch: dict[str, Any] = field(default_factory=dict)

    def stage(
        self,
        name: str,
        fingerprint: str,
        *,
        teaching: Teaching | None = None,
        train: TrainSpec | None = None,
    ) -> StageContext:
        """The context `fit` runs a stage in: this job's data, augmentation, callbacks and
        checkpoints; `train` (default the spec's) and `teaching` (default the current one)."""
        return StageContext(
            name=name,
            data=self.data,
            train=train or self.spec.train,
            teacher=teaching or self.teaching,
            augment=self.augment,
            callbacks=self.callbacks,
            checkpoints=self.checkpoints,
            fingerprint=fingerprint,
        )

    @property
    def student(self) -> nn.Module:
        return self.generations[-1].model

    @property
    def result(self) -> FitResult:
        return self.generations[-1].result

    def student_fingerprint(self) -> str:
        """What shapes every stage that trains the student's architecture (distill, later
        generations): the student, data, training, method and everything upstream."""
        s = self.spec
        return fingerprint(s.student, s.data, s.train, s.method, *self.upstream)

    def figures(self, model: nn.Module, accuracy: float | None = None) -> dict[str, Any]:
        """Accuracy, parameters, size and CPU latency of `model` on the evaluation split (the
        model is moved to the CPU); `accuracy`, when given, is one already measured (a frozen
        teacher's, by the check before distilling) and is not measured again."""
        model = model.cpu()
        val, spec = self.data.x_val, self.spec.evaluate
        latency = evaluate.cpu_latency_ms(
            model, val[: spec.latency_batch_size].cpu(), runs=spec.latency_runs
        )
        return {
            "accuracy": self.accuracy(model) if accuracy is None else accuracy,
            "params": evaluate.count_params(model),
            "size_bytes": evaluate.size_bytes(model),
            "latency_ms": round(latency, 4),
        }

    def accuracy(self, model: nn.Module) -> float:
        """Accuracy on the evaluation split, rounded as the report keeps it."""
        return round(evaluate.accuracy(model.cpu(), self.data.x_val, self.data.y_val), 4)

    def fresh_method(self) -> Method:
        """The spec's method, new (each training stage has its own learnable parts)."""
        return methods.build(self.spec.method.name, self.spec.method.model_extra)


@dataclass(frozen=True)
class Stage:
    """One step of a job's plan. `epochs` weighs it in the job's progress (0: a step that trains
    nothing, such as loading a teacher file, takes no share); `timing` groups stages in the
    report's timings; `run` does the work."""

    name: str
    epochs: int
    run: Callable[[JobState], None]
    timing: str = ""

    @property
    def timing_key(self) -> str:
        return self.timing or self.name


class Scheme:
    """Base class of every scheme; every hook has a do-nothing default."""

    name: ClassVar[str] = ""
    order: ClassVar[int] = 0

    def applies(self, spec: JobSpec) -> bool:
        """Whether this job uses the scheme (only then are its other hooks called)."""
        return False

    def validate(self, spec: JobSpec) -> FieldErrors:
        """Static checks at submit: what this scheme cannot combine with. No model is built."""
        return []

    def plan(self, spec: JobSpec) -> list[Stage]:
        """The stages this scheme adds, in running order."""
        return []

    def check(self, job: JobState) -> None:
        """Checks that need a built model (layer names...), before any stage trains; raise
        `InputError` naming the field."""

    def report(self, job: JobState) -> dict[str, Any]:
        """This scheme's part of the report: `Report` fields (`sections` for a scheme without a
        field of its own), measured on the evaluation split."""
        return {}


def student_scheme_of(spec: JobSpec) -> str:
    """The student scheme the spec's method trains with (`Method.scheme`); "" for a method that
    does not exist (parse_spec reports it)."""
    try:
        return methods.get(spec.method.name).scheme
    except KeyError:
        return ""


class StudentScheme(Scheme):
    """A scheme that trains the job's student in the `distill` stage: it builds what trains
    (`build_trainee`) and takes the exported student out of it (`extract_student`)."""

    order: ClassVar[int] = 40

    def applies(self, spec: JobSpec) -> bool:
        """A student scheme is chosen by the method (`Method.scheme`): exactly one applies."""
        return student_scheme_of(spec) == self.name

    def check(self, job: JobState) -> None:
        """The layers the method reads exist on what trains (a wrong name fails here, before
        any training, not after the teacher has been trained)."""
        example = job.data.x_train[:2]
        trainee = self.build_trainee(job)
        check_layers(trainee, job.method.student_layers(), "method.student_layers", example)

    def build_trainee(self, job: JobState) -> nn.Module:
        raise NotImplementedError

    def trainee_scale(self, spec: JobSpec) -> int:
        """How many student-sized models `build_trainee` trains at once: the size limits
        (kdcore/budget.py) hold the student's estimate times this to the budget."""
        return 1

    def extract_student(self, job: JobState, trainee: nn.Module) -> nn.Module:
        return trainee

    def train_settings(self, job: JobState) -> TrainSpec:
        return job.spec.train

    def teaching(self, job: JobState) -> Teaching:
        """Who teaches the distill stage: by default whoever the earlier stages left."""
        return job.teaching

    def plan(self, spec: JobSpec) -> list[Stage]:
        return [Stage("distill", spec.train.epochs, self.distill)]

    def distill(self, job: JobState) -> None:
        trainee = self.build_trainee(job)
        ctx = job.stage(
            "distill",
            job.student_fingerprint(),
            teaching=self.teaching(job),
            train=self.train_settings(job),
        )
        result = fit(trainee, job.method, ctx)
        job.generations = [Generation(1, self.extract_student(job, trainee), result)]


#: Every scheme, by name; a scheme file registers its class with `@register("name")` (the
#: registry module discovers the files, so a new scheme touches nothing else).
SCHEMES: Registry[type[Scheme]] = Registry("scheme")
register = SCHEMES.register
