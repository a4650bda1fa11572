"""Hooks the training loop calls, so the CLI can draw progress bars and a worker can record
metrics and honour a cancel flag, without the loop knowing about either."""

from __future__ import annotations

from dataclasses import asdict, dataclass


@dataclass
class EpochRecord:
    stage: str
    epoch: int  # 1-based
    train_loss: float
    student_accuracy: float  # percent on the validation split
    lr: float
    seconds: float  # the whole epoch, validation included
    train_seconds: float  # the batch loop alone (what bench/kd_overhead.py compares)

    def to_dict(self) -> dict:
        return asdict(self)


class Callbacks:
    """No-op defaults; subclass and override what you need."""

    def on_stage_start(self, stage: str, epochs: int, steps_per_epoch: int) -> None:
        pass

    def on_step(self, stage: str, epoch: int, step: int, loss: float) -> None:
        pass

    def on_epoch_end(self, record: EpochRecord) -> None:
        pass

    def on_resume(self, stage: str, history: list[EpochRecord]) -> None:
        """A stage resumed from its checkpoint: `history` holds the epochs it will not run
        again (a worker killed between a checkpoint and its epoch's metrics lost those)."""

    def on_stage_end(self, stage: str) -> None:
        pass

    def should_cancel(self) -> bool:
        return False
