"""Training callbacks that report a job's progress, metrics and stage events to the database and
pass the cancel flag back to the loop.

Progress is one number in [0, 1] over the whole job: the stages of the job's plan share it by
their epochs (a teacher trained in the job only when `teacher.train`, the baseline only when
`evaluate.baseline`), with a small fixed share for evaluation and export. It is written
at most every `min_interval` seconds plus at every epoch end, so a fast loop does not turn into a
stream of UPDATEs. Every write is fenced on the claim (store.jobs) and skipped once the claim is
lost.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

from celery.exceptions import SoftTimeLimitExceeded
from sqlalchemy import Engine
from sqlalchemy.orm import Session

from kdcore.callbacks import Callbacks, EpochRecord
from kdcore.schemes.registry import plan
from kdcore.spec import JobSpec
from store.db import session_scope
from store.jobs import Claim, add_event, record_metrics, report_progress
from worker.lease import Lease

log = logging.getLogger(__name__)

TRAIN_SHARE = 0.95  # the rest is evaluation and export, split evenly
METRICS = ("train_loss", "student_accuracy", "lr")


def stage_weights(spec: JobSpec) -> dict[str, float]:
    """Each stage's share of the job's progress, summing to 1, for the stages `spec` runs: the
    job's plan (kdcore.schemes) weighed by epochs, so progress and the pipeline never disagree
    on what runs."""
    epochs = {stage.name: stage.epochs for stage in plan(spec) if stage.epochs > 0}
    total = sum(epochs.values())
    weights = {stage: TRAIN_SHARE * n / total for stage, n in epochs.items()}
    weights["evaluate"] = weights["export"] = (1 - TRAIN_SHARE) / 2
    return weights


class ProgressModel:
    """Maps (stage, epoch, step) to overall progress; pure, so it is easy to test."""

    def __init__(self, weights: dict[str, float]):
        self.weights = weights
        self.steps: dict[str, tuple[int, int]] = {}  # stage -> (epochs, steps per epoch)

    def _before(self, stage: str) -> float:
        """The share of the stages that run before `stage` (weights are in running order)."""
        order = list(self.weights)
        if stage not in order:
            return 0.0
        return sum(self.weights[s] for s in order[: order.index(stage)])

    def start(self, stage: str, epochs: int, steps_per_epoch: int) -> float:
        self.steps[stage] = (max(epochs, 1), max(steps_per_epoch, 1))
        return self._before(stage)

    def at(self, stage: str, epoch: int, step: int) -> float:
        """Progress after `step` (1-based) of `epoch` (1-based) of `stage`."""
        epochs, steps = self.steps.get(stage, (1, 1))
        fraction = ((epoch - 1) + min(step, steps) / steps) / epochs
        return self._before(stage) + self.weights.get(stage, 0.0) * min(max(fraction, 0.0), 1.0)

    def end(self, stage: str) -> float:
        return self._before(stage) + self.weights.get(stage, 0.0)


class JobCallbacks(Callbacks):
    """Callbacks for one claimed attempt; `extra` (tests, embedding) is called after ours."""

    def __init__(
        self,
        engine: Engine,
        claim: Claim,
        spec: JobSpec,
        lease: Lease,
        extra: Callbacks | None = None,
        min_interval: float = 0.5,
    ):
        self.engine = engine
        self.claim = claim
        self.lease = lease
        self.extra = extra or Callbacks()
        self.min_interval = min_interval
        self.model = ProgressModel(stage_weights(spec))
        self.progress = 0.0
        self._last_write = 0.0
        self._first_epoch: dict[str, int] = {}

    # --- writing -------------------------------------------------------------------------------

    def _write(self, what: str, fn: Callable[[Session], None]) -> None:
        """Run `fn` in its own transaction; a database blip costs a progress update, not the
        job (the next write catches up)."""
        if self.lease.lost:
            return
        try:
            with session_scope(self.engine) as s:
                fn(s)
        except SoftTimeLimitExceeded:
            raise
        except Exception:
            log.warning("job %s: could not write %s", self.claim.job_id, what, exc_info=True)

    def _advance(self, value: float) -> None:
        self.progress = max(self.progress, min(value, 1.0))  # never moves backwards

    def _report(self, stage: str, epoch: int | None, force: bool = False) -> None:
        now = time.monotonic()
        if not force and now - self._last_write < self.min_interval:
            return
        self._last_write = now
        progress = round(self.progress, 4)
        self._write("progress", lambda s: report_progress(s, self.claim, progress, stage, epoch))

    def _event(self, message: str, data: dict) -> None:
        self._write("event", lambda s: add_event(s, self.claim.job_id, "stage", message, data=data))

    # --- kdcore hooks ----------------------------------------------------------------------------

    def on_stage_start(self, stage: str, epochs: int, steps_per_epoch: int) -> None:
        self._advance(self.model.start(stage, epochs, steps_per_epoch))
        self._event(
            f"{stage} started",
            {"stage": stage, "epochs": epochs, "steps_per_epoch": steps_per_epoch},
        )
        self._report(stage, None, force=True)
        self.extra.on_stage_start(stage, epochs, steps_per_epoch)

    def on_step(self, stage: str, epoch: int, step: int, loss: float) -> None:
        if stage not in self._first_epoch:
            self._first_epoch[stage] = epoch
            if epoch > 1:
                self._event(
                    f"{stage} resumed from the epoch {epoch - 1} checkpoint",
                    {"stage": stage, "resumed_from_epoch": epoch - 1},
                )
        self._advance(self.model.at(stage, epoch, step))
        self._report(stage, epoch)
        self.extra.on_step(stage, epoch, step, loss)

    def _write_metrics(self, record: EpochRecord) -> None:
        values = {name: float(getattr(record, name)) for name in METRICS}
        self._write(
            "metrics",
            lambda s: record_metrics(s, self.claim, record.stage, record.epoch, values),
        )

    def on_epoch_end(self, record: EpochRecord) -> None:
        steps = self.model.steps.get(record.stage, (1, 1))[1]
        self._advance(self.model.at(record.stage, record.epoch, steps))
        self._write_metrics(record)
        self._report(record.stage, record.epoch, force=True)
        self.extra.on_epoch_end(record)

    def on_resume(self, stage: str, history: list[EpochRecord]) -> None:
        """Record the metrics of the epochs the checkpoint holds (an epoch whose worker died
        after its checkpoint and before its metrics would otherwise be missing for good;
        recording overwrites, so the others are unchanged)."""
        for record in history:
            self._write_metrics(record)
        self.extra.on_resume(stage, history)

    def on_stage_end(self, stage: str) -> None:
        self._advance(self.model.end(stage))
        data: dict = {"stage": stage}
        if self._first_epoch.get(stage, 1) > 1:
            data["resumed_from_epoch"] = self._first_epoch[stage] - 1
        elif stage not in self._first_epoch and stage in ("teacher", "baseline", "distill"):
            data["resumed_from_epoch"] = self.model.steps.get(stage, (0, 0))[0]  # all done
        self._event(f"{stage} finished", data)
        self._report(stage, None, force=True)
        self.extra.on_stage_end(stage)

    def should_cancel(self) -> bool:
        return self.lease.should_stop() or self.extra.should_cancel()
