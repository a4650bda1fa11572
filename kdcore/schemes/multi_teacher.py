"""Several teachers teaching one student (`teachers:` in the spec, `multi_teacher:` for how).

- `average` (default): the soft target is the weighted mean of the teachers' probabilities at
  temperature T, p = Σ_i w_i·softmax(z_i/T) / Σ_i w_i. The ensemble hands the method the logits
  T·log p, whose softmax at T is exactly p, so every response method (kd, dkd, ...) distils from
  the averaged soft targets unchanged, and the logits are cached like a single teacher's.
- `random`: each step one teacher, drawn with probability proportional to its weight, gives the
  logits. The draw of step s of epoch e comes from a generator seeded with (train.seed, e, s):
  reproducible, identical after a resume, and independent of the data order.

Feature methods read the layers of one teacher, `multi_teacher.feature_teacher` (default the
first), while the response knowledge comes from all of them.
"""

from __future__ import annotations

import math
from functools import partial
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from kdcore.schemes._teachers import resolve_teacher
from kdcore.schemes.base import JobState, Scheme, Stage, register
from kdcore.spec import JobSpec, MultiTeacherSpec, TeacherSpec
from kdcore.train import Teaching, freeze


class TeacherEnsemble(nn.Module):
    def __init__(
        self,
        members: list[nn.Module],
        weights: list[float],
        modes: list[str],
        combine: str = "average",
        temperature: float = 1.0,
        feature_teacher: int = 0,
        seed: int = 0,
        needs_features: bool = False,
    ):
        super().__init__()
        self.members = nn.ModuleList(members)
        self.weights = [float(w) for w in weights]
        self.modes = list(modes)
        self.combine = combine
        self.temperature = float(temperature)
        self.feature_index = feature_teacher
        self.seed = seed
        self.current = 0  # the teacher drawn for this step (random)
        self.needs_features = needs_features  # random: run the feature teacher every step
        for m, mode in zip(self.members, self.modes, strict=True):
            freeze(m, mode)

    @property
    def feature_model(self) -> nn.Module:
        """The teacher whose modules feature methods hook (see `models.outputs.hook_target`)."""
        return self.members[self.feature_index]

    def train(self, mode: bool = True) -> TeacherEnsemble:
        """Train mode applies each member's own `mode`; eval puts every member in eval."""
        self.training = mode
        for m, own in zip(self.members, self.modes, strict=True):
            m.train(mode and own == "train")
        return self

    def draw(self, epoch: int, step: int) -> int:
        g = torch.Generator().manual_seed(hash((self.seed, epoch, step)) & (2**62 - 1))
        probs = torch.tensor(self.weights, dtype=torch.float64)
        return int(torch.multinomial(probs, 1, generator=g).item())

    def start_step(self, epoch: int, step: int) -> None:
        """Called by the training loop before each step."""
        if self.combine == "random":
            self.current = self.draw(epoch, step)

    def forward(self, x: Tensor) -> Tensor:
        if self.combine == "random":
            if self.needs_features and self.current != self.feature_index:
                self.feature_model(x)  # its hooked layers feed the feature terms
            return self.members[self.current](x)
        t = self.temperature
        total = sum(self.weights)
        probs = sum(
            (w / total) * torch.softmax(m(x).float() / t, dim=1)
            for m, w in zip(self.members, self.weights, strict=True)
        )
        assert isinstance(probs, Tensor)
        return t * torch.log(probs.clamp_min(torch.finfo(probs.dtype).tiny))


def temperature(settings: MultiTeacherSpec, method_params: object) -> float:
    """`multi_teacher.temperature`, else the method's own `temperature`, else 1."""
    if settings.temperature is not None:
        return settings.temperature
    t = getattr(method_params, "temperature", None)
    return float(t) if isinstance(t, int | float) and math.isfinite(t) else 1.0


def build(
    spec: JobSpec, members: list[nn.Module], method_params: object, needs_features: bool = False
) -> TeacherEnsemble:
    assert spec.teachers is not None
    settings = spec.multi_teacher or MultiTeacherSpec()
    return TeacherEnsemble(
        members,
        [t.weight for t in spec.teachers],
        [t.mode for t in spec.teachers],
        combine=settings.combine,
        temperature=temperature(settings, method_params),
        feature_teacher=settings.feature_teacher,
        seed=spec.train.seed,
        needs_features=needs_features,
    )


def without_weight(entry: TeacherSpec) -> TeacherSpec:
    """The teacher itself: its weight does not change how it is trained (fingerprints)."""
    return TeacherSpec.model_validate(entry.model_dump(exclude={"weight"}))


def report_section(
    spec: JobSpec,
    summaries: list[dict],
    histories: list[list[Any]],
    ensemble_accuracy: float | None,
) -> dict:
    """The report's `teacher`: the best teacher's figures (the gap and gates use its accuracy),
    every teacher under `members`, and the averaged ensemble's accuracy."""
    assert spec.teachers is not None
    settings = spec.multi_teacher or MultiTeacherSpec()
    members = [
        {
            "source": t.source,
            "arch": t.arch,
            "weight": t.weight,
            "mode": t.mode,
            **s,
            "history": h,
        }
        for t, s, h in zip(spec.teachers, summaries, histories, strict=True)
    ]
    best = max(range(len(members)), key=lambda i: members[i]["accuracy"])
    return {
        "source": "teachers",
        "arch": members[best]["arch"],
        **summaries[best],
        "best": best,
        "combine": settings.combine,
        "ensemble_accuracy": ensemble_accuracy,
        "members": members,
        "history": [],
    }


@register("multi_teacher")
class MultiTeacher(Scheme):
    """Stages `teacher1`, `teacher2`, ...: each teacher loaded or trained; after the last one,
    the ensemble teaches the next stage."""

    name: ClassVar[str] = "multi_teacher"
    order: ClassVar[int] = 10

    def applies(self, spec: JobSpec) -> bool:
        return spec.teachers is not None

    def plan(self, spec: JobSpec) -> list[Stage]:
        assert spec.teachers is not None
        return [
            Stage(
                f"teacher{i + 1}",
                t.train.epochs if t.train is not None else 0,
                partial(self.resolve, i=i),
                timing="teacher",
            )
            for i, t in enumerate(spec.teachers)
        ]

    def resolve(self, job: JobState, i: int) -> None:
        spec = job.spec
        assert spec.teachers is not None
        settings = spec.multi_teacher or MultiTeacherSpec()
        layers = job.method.teacher_layers() if i == settings.feature_teacher else []
        resolved = resolve_teacher(
            job,
            without_weight(spec.teachers[i]),
            layers,
            field=f"teachers.{i}",
            stage=f"teacher{i + 1}",
        )
        members = job.scratch.setdefault(self.name, [])
        members.append(resolved)
        if len(members) < len(spec.teachers):
            return
        needs_features = bool(job.method.teacher_layers())
        ensemble = build(spec, [r.model for r in members], job.method.hparams, needs_features)
        mode = "train" if any(t.mode == "train" for t in spec.teachers) else "eval"
        job.teaching = Teaching(ensemble, mode, cache=ensemble.combine == "average")
        job.upstream = [*spec.teachers, settings]
        job.scratch[f"{self.name}.ensemble"] = ensemble

    def report(self, job: JobState) -> dict[str, Any]:
        members = job.scratch[self.name]
        summaries = [job.figures(r.model, accuracy=r.accuracy) for r in members]
        ensemble = job.scratch[f"{self.name}.ensemble"]
        averaged = job.accuracy(ensemble) if ensemble.combine == "average" else None
        histories = [r.history for r in members]
        return {"teacher": report_section(job.spec, summaries, histories, averaged)}
