"""Adding a scheme is one class and one registration (docs/schemes.md): a toy "polish" scheme
fine-tunes the distilled student one more epoch with cross-entropy at a tenth of the learning
rate. Without touching the pipeline, the worker or the report, it is checked at submit, planned
(so progress weighs it), run in order, and reported."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any, ClassVar

import pytest

from kdcore.methods import registry as methods
from kdcore.pipeline import run
from kdcore.schemes.base import SCHEMES, FieldErrors, JobState, Scheme, Stage
from kdcore.spec import JobSpec, SpecError
from kdcore.train import NO_TEACHER, fit
from kdcore.validation import parse_spec
from worker.progress import stage_weights

from ._helpers import Stages, job


class Polish(Scheme):
    name: ClassVar[str] = "polish"
    order: ClassVar[int] = 60  # after every stage that trains the student

    def applies(self, spec: JobSpec) -> bool:
        return spec.name.startswith("polished")

    def validate(self, spec: JobSpec) -> FieldErrors:
        if spec.generations > 1:
            return [("generations", "polish fine-tunes one student; use 1")]
        return []

    def plan(self, spec: JobSpec) -> list[Stage]:
        return [Stage("polish", 1, self.polish)]

    def polish(self, job: JobState) -> None:
        before = job.accuracy(job.student)
        optimizer = job.spec.train.optimizer
        train = job.spec.train.model_copy(
            update={
                "epochs": 1,
                "optimizer": optimizer.model_copy(update={"lr": optimizer.lr / 10}),
            }
        )
        ctx = job.stage("polish", job.student_fingerprint(), teaching=NO_TEACHER, train=train)
        fit(job.student, methods.build("ce"), ctx)
        job.scratch[self.name] = before

    def report(self, job: JobState) -> dict[str, Any]:
        return {"sections": {"polish": {"accuracy_before": job.scratch[self.name]}}}


@pytest.fixture
def polish() -> Iterator[None]:
    """The one registration, undone after the test (the registry is process-wide)."""
    SCHEMES.register("polish")(Polish)
    try:
        yield
    finally:
        SCHEMES._items.pop("polish")


def test_a_toy_scheme_plugs_in_with_one_registration(polish: None, tmp_path: Path) -> None:
    spec = parse_spec(job("polished"))
    assert list(stage_weights(spec)) == ["teacher", "distill", "polish", "evaluate", "export"]

    stages = Stages()
    report = run(spec, tmp_path, callbacks=stages)
    assert stages.trained == ["teacher", "distill", "polish", "evaluate", "export"]
    assert 0 < report.sections["polish"]["accuracy_before"] <= 100
    assert report.timings["polish"] > 0

    with pytest.raises(SpecError) as exc:
        parse_spec(job("polished", generations=2))
    assert exc.value.errors == [("generations", "polish fine-tunes one student; use 1")]
    assert "polish" not in stage_weights(parse_spec(job("plain")))
