"""The job spec: one pydantic schema shared by the API (validation) and the engine (execution).

Every model forbids unknown keys, so a typo is an error rather than a silently ignored setting.
`kdcore.validation.parse_spec` is the single entry point (it also runs every method's and
scheme's static checks); errors are a `SpecError` whose lines read `field.path: what is wrong;
what is allowed`. This module only declares the shape, so everything else may import it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    AnyHttpUrl,
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    model_validator,
)

from kdcore import limits


class Strict(BaseModel):
    # NaN and ±Infinity slip past `gt`/`ge` bounds (NaN compares false, inf passes `ge`) and
    # are not JSON: refused as "Input should be a finite number", naming the field.
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)


class SpecError(ValueError):
    """An invalid spec; `errors` holds (field path, message) pairs."""

    def __init__(self, errors: list[tuple[str, str]]):
        self.errors = errors
        super().__init__("\n".join(f"{loc}: {msg}" for loc, msg in errors))


class OptimizerSpec(Strict):
    name: Literal["sgd", "adam", "adamw"] = "adam"
    lr: float = Field(1e-3, gt=0)
    weight_decay: float = Field(0.0, ge=0)
    momentum: float = Field(0.9, ge=0, lt=1)


class SchedulerSpec(Strict):
    name: Literal["none", "cosine", "step"] = "none"
    step_size: int = Field(30, ge=1, description="epochs between decays (step)")
    gamma: float = Field(0.1, gt=0, le=1, description="decay factor (step)")


class TrainSpec(Strict):
    epochs: int = Field(10, ge=1, le=10_000)
    batch_size: int = Field(128, ge=1, le=65_536)
    optimizer: OptimizerSpec = OptimizerSpec()
    scheduler: SchedulerSpec = SchedulerSpec()
    seed: int = 0
    device: Literal["auto", "cpu", "cuda"] = "auto"
    amp: bool = Field(True, description="mixed precision; only ever used on CUDA")
    grad_clip: float | None = Field(None, gt=0)
    max_runtime_s: int = Field(
        6 * 3600, ge=10, description="the service stops a job that runs longer (soft time limit)"
    )


class TeacherTrainSpec(TrainSpec):
    """Training settings for a teacher trained inside the job (same keys as `train`)."""


class TeacherSpec(Strict):
    """Where the teacher comes from: exactly one of checkpoint, torchscript, onnx or train."""

    arch: str | None = Field(None, description="zoo architecture (with checkpoint or train)")
    kwargs: dict[str, Any] = Field(default_factory=dict)
    checkpoint: str | None = Field(None, description="state dict (.pt/.pth or .safetensors)")
    torchscript: str | None = None
    onnx: str | None = None
    train: TeacherTrainSpec | None = None
    output: int | str | None = Field(
        None,
        description="where the logits are when forward returns a tuple/list (an index), a dict "
        "(a key) or an object (an attribute); default: the tensor itself, else the first "
        "element / 'logits' key / .logits attribute (ONNX: an output index or name)",
    )
    mode: Literal["eval", "train"] = Field(
        "eval",
        description="eval: BatchNorm uses its running statistics, dropout off; train: BatchNorm "
        "uses each batch's statistics (running statistics are not updated), dropout on. "
        "Either way no teacher parameter is ever trained",
    )

    inputs: Literal["raw", "normalized"] | None = Field(
        None,
        description="what the teacher receives: raw (the data as the file holds it, before "
        "data.normalize) or normalized (what the student sees). Default: raw for a teacher "
        "given as a file (checkpoint, torchscript, onnx), which was trained on its own inputs; "
        "normalized for a teacher trained in the job (the only choice there)",
    )
    expected_accuracy: float | None = Field(
        None,
        gt=0,
        le=100,
        description="percent the teacher is known to reach on this data: the job stops before "
        "distilling when it scores more than 10 points below on the evaluation split",
    )

    @model_validator(mode="after")
    def _one_source(self) -> TeacherSpec:
        given = [k for k in ("checkpoint", "torchscript", "onnx", "train") if getattr(self, k)]
        if len(given) != 1:
            raise ValueError(
                "give exactly one teacher source: checkpoint (with arch), torchscript, onnx, "
                f"or train (with arch); got {given or 'none'}"
            )
        if given[0] in ("checkpoint", "train") and not self.arch:
            raise ValueError(f"teacher.{given[0]} needs teacher.arch (a zoo architecture)")
        if given[0] in ("torchscript", "onnx") and (self.arch or self.kwargs):
            raise ValueError(f"teacher.{given[0]} carries its own architecture; remove arch/kwargs")
        if self.mode == "train" and given[0] in ("torchscript", "onnx"):
            raise ValueError(
                f"teacher.mode train needs a teacher with an architecture (checkpoint or train), "
                f"not {given[0]}; use mode eval"
            )
        if self.inputs == "raw" and given[0] == "train":
            raise ValueError(
                "a teacher trained in the job trains on what the student sees; remove "
                "teacher.inputs (or set it to normalized), or turn off data.normalize"
            )
        return self

    @property
    def input_mode(self) -> str:
        """`inputs`, or its default: raw for a teacher file, normalized when trained here."""
        if self.inputs is not None:
            return self.inputs
        return "normalized" if self.source == "train" else "raw"

    @property
    def source(self) -> str:
        for key in ("checkpoint", "torchscript", "onnx", "train"):
            if getattr(self, key):
                return key
        raise AssertionError("validated above")


class TeacherEntry(TeacherSpec):
    """One of several teachers (`teachers:`): a teacher plus its weight."""

    weight: float = Field(
        1.0, gt=0, description="share in the averaged soft targets, or chance of being drawn"
    )


class MultiTeacherSpec(Strict):
    """How several teachers (`teachers:`) teach together."""

    combine: Literal["average", "random"] = Field(
        "average",
        description="average: the weighted mean of the teachers' probabilities at temperature T "
        "is the soft target; random: one teacher, drawn by weight, teaches each step",
    )
    temperature: float | None = Field(
        None, gt=0, description="T for average; default: the method's temperature, else 1"
    )
    feature_teacher: int = Field(
        0, ge=0, description="index of the teacher whose layers feature methods read"
    )


class StudentSpec(Strict):
    arch: str
    kwargs: dict[str, Any] = Field(default_factory=dict)
    checkpoint: str | None = Field(None, description="optional starting weights (state dict)")
    output: int | str | None = Field(
        None,
        description="where the logits are when forward returns a tuple/list, dict or object "
        "(as teacher.output); the exported student returns the logits alone",
    )


class AssistantSpec(Strict):
    """One teacher assistant (`assistants:`): a zoo architecture distilled inside the job."""

    arch: str
    kwargs: dict[str, Any] = Field(default_factory=dict)


class SyntheticSpec(Strict):
    """Sizes bounded by kdcore/limits.py (their product too: kdcore/data/sizes.py)."""

    input_shape: list[Annotated[int, Field(ge=1, le=limits.MAX_INPUT_DIM)]] = Field(
        default_factory=lambda: [16], min_length=1, max_length=3
    )
    num_classes: int = Field(4, ge=2, le=limits.MAX_CLASSES)
    n_train: int = Field(512, ge=2, le=limits.MAX_SYNTHETIC_ROWS)
    n_val: int = Field(256, ge=2, le=limits.MAX_SYNTHETIC_ROWS)
    noise: float = Field(1.0, ge=0, description="class overlap; higher is harder")
    seed: int = 0


class AugmentSpec(Strict):
    """Random training-time augmentation; any of it disables the teacher output cache."""

    noise_std: float = Field(0.0, ge=0)
    hflip: bool = False
    crop_padding: int = Field(0, ge=0, le=limits.MAX_CROP_PADDING)

    @property
    def active(self) -> bool:
        return self.noise_std > 0 or self.hflip or self.crop_padding > 0


class DataSpec(Strict):
    source: str = Field(..., description="'digits', 'synthetic', or a file path (.npz, .pt, .csv)")
    val_fraction: float = Field(0.2, gt=0, lt=1, description="used when the file has no val split")
    label_column: str = Field("label", description="CSV only: the column holding labels")
    labeled_fraction: float = Field(
        1.0, gt=0, le=1, description="keep labels for this share of training rows (seeded)"
    )
    normalize: bool = Field(
        True,
        description="standardise with training-set statistics what the student (and a teacher "
        "trained in the job) sees; student.json records them. A teacher file gets its own "
        "inputs (teacher.inputs)",
    )
    synthetic: SyntheticSpec = SyntheticSpec()
    augment: AugmentSpec = AugmentSpec()
    seed: int = 0


class MethodSpec(BaseModel):
    """`name` plus the method's own keys, checked against its params model in `parse_spec`."""

    model_config = ConfigDict(extra="allow", allow_inf_nan=False)
    name: str = "kd"

    def params(self) -> BaseModel:
        from kdcore.methods import registry

        return registry.get(self.name).params.model_validate(self.model_extra or {})


class EvaluateSpec(Strict):
    baseline: bool = Field(False, description="also train the student alone with CE only")
    latency_batch_size: int = Field(32, ge=1, le=limits.MAX_LATENCY_BATCH)
    latency_runs: int = Field(20, ge=1, le=limits.MAX_LATENCY_RUNS)


class GatesSpec(Strict):
    max_gap: float | None = Field(None, description="accuracy points; fail above this")
    min_student_accuracy: float | None = Field(None, ge=0, le=100, description="percent")


class NotifySpec(Strict):
    """Who the service tells when the job ends (ignored by a local `distill run`)."""

    webhook_url: AnyHttpUrl | None = Field(
        None, description="gets a signed JSON summary when the job succeeds, fails or is cancelled"
    )


ExportFormat = Literal["torchscript", "torch_export", "onnx", "safetensors"]
ALL_FORMATS: list[ExportFormat] = ["torchscript", "torch_export", "onnx", "safetensors"]


class JobSpec(Strict):
    name: str = Field(..., min_length=1, max_length=200)
    teacher: TeacherSpec | None = None
    teachers: list[TeacherEntry] | None = Field(
        None,
        min_length=1,
        max_length=limits.MAX_MODELS,
        description="several teachers instead of one (see multi_teacher)",
    )
    multi_teacher: MultiTeacherSpec | None = None
    assistants: list[AssistantSpec] = Field(
        default_factory=list,
        max_length=limits.MAX_MODELS,
        description="teacher assistants, largest first: teacher → assistants[0] → ... → "
        "student, each link distilled with `method` and `train`",
    )
    student: StudentSpec
    generations: int = Field(
        1,
        ge=1,
        le=100,
        description="born-again generations: generation k+1 (the student's architecture) is "
        "distilled from generation k with `method`; the last one is the job's student",
    )
    data: DataSpec
    method: MethodSpec = MethodSpec()
    train: TrainSpec = TrainSpec()
    evaluate: EvaluateSpec = EvaluateSpec()
    export: list[ExportFormat] = Field(default_factory=lambda: list(ALL_FORMATS))
    gates: GatesSpec = GatesSpec()
    notify: NotifySpec = NotifySpec()


def _loc(parts: tuple[Any, ...]) -> str:
    return ".".join(str(p) for p in parts) or "(root)"


def spec_errors(exc: ValidationError, prefix: tuple[Any, ...] = ()) -> list[tuple[str, str]]:
    """pydantic's errors as (field path, message) pairs, worded for a person."""
    out = []
    for err in exc.errors():
        msg = err["msg"].removeprefix("Value error, ")
        if err["type"] == "extra_forbidden":
            msg = "unknown key; remove it or check its spelling"
        elif err["type"] == "missing":
            msg = "required field is missing"
        out.append((_loc(prefix + tuple(err["loc"])), msg))
    return out


def teacher_specs(spec: JobSpec) -> list[tuple[str, TeacherSpec]]:
    """(field path, teacher) for every teacher the spec names: `teacher`, or `teachers.<i>`."""
    if spec.teacher is not None:
        return [("teacher", spec.teacher)]
    return [(f"teachers.{i}", t) for i, t in enumerate(spec.teachers or [])]


UPLOAD_PREFIX = "upload:"
#: `student.checkpoint: job:<id>`: the safetensors student of an earlier job of the service.
JOB_PREFIX = "job:"


def file_references(spec: JobSpec) -> list[tuple[str, str, str]]:
    """Every file the spec names: (field path, value, kind) with kind "model" or "dataset".

    A value may be a path or `upload:<id>`, a file uploaded to the service beforehand.
    """
    refs = [
        (f"{loc}.{key}", getattr(t, key), "model")
        for loc, t in teacher_specs(spec)
        for key in ("checkpoint", "torchscript", "onnx")
    ]
    refs.append(("student.checkpoint", spec.student.checkpoint, "model"))
    if spec.data.source not in ("digits", "synthetic"):
        refs.append(("data.source", spec.data.source, "dataset"))
    return [(loc, value, kind) for loc, value, kind in refs if value]


def with_files(spec: JobSpec, replace: dict[str, str]) -> JobSpec:
    """A copy of `spec` whose file fields (by path, as in `file_references`) are replaced."""
    data = spec.model_dump()
    for loc, value in replace.items():
        set_path(data, loc, value)
    return JobSpec.model_validate(data)


def set_path(data: dict[str, Any], loc: str, value: Any) -> None:
    """Set `data` at a dotted field path such as "teachers.1.onnx" (list indexes as numbers)."""
    *parents, key = loc.split(".")
    node: Any = data
    for part in parents:
        node = node[int(part)] if isinstance(node, list) else node[part]
    node[key] = value


def resolve_paths(spec: JobSpec, base: Path) -> JobSpec:
    """Make file references relative to the spec's folder absolute."""

    def fix(p: str | None) -> str | None:
        if p is None or p.startswith((UPLOAD_PREFIX, JOB_PREFIX)) or Path(p).is_absolute():
            return p
        candidate = base / p
        return str(candidate) if candidate.exists() or not Path(p).exists() else p

    s, d = spec.student, spec.data
    for _, t in teacher_specs(spec):
        t.checkpoint, t.torchscript, t.onnx = fix(t.checkpoint), fix(t.torchscript), fix(t.onnx)
    s.checkpoint = fix(s.checkpoint)
    if d.source not in ("digits", "synthetic"):
        d.source = fix(d.source) or d.source
    return spec
