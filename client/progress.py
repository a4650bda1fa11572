"""Rich progress bars for `distill run`: one bar per stage, advanced by the engine's callbacks."""

from __future__ import annotations

from types import TracebackType

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
)

from kdcore.callbacks import Callbacks, EpochRecord

STAGE_TITLES = {
    "teacher": "training teacher",
    "baseline": "training baseline",
    "distill": "distilling student",
    "evaluate": "evaluating",
    "export": "exporting",
}


class RichProgress(Callbacks):
    def __init__(self, console: Console, disable: bool = False):
        self.progress = Progress(
            TextColumn("{task.description:<20}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[info]}"),
            TimeElapsedColumn(),
            console=console,
            disable=disable,
        )
        self.tasks: dict[str, TaskID] = {}
        self.steps_per_epoch: dict[str, int] = {}

    def __enter__(self) -> RichProgress:
        self.progress.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.progress.stop()

    def on_stage_start(self, stage: str, epochs: int, steps_per_epoch: int) -> None:
        self.steps_per_epoch[stage] = steps_per_epoch
        self.tasks[stage] = self.progress.add_task(
            STAGE_TITLES.get(stage, stage), total=epochs * steps_per_epoch, info=""
        )

    def on_step(self, stage: str, epoch: int, step: int, loss: float) -> None:
        done = (epoch - 1) * self.steps_per_epoch[stage] + step
        self.progress.update(self.tasks[stage], completed=done)

    def on_epoch_end(self, record: EpochRecord) -> None:
        self.progress.update(
            self.tasks[record.stage],
            completed=record.epoch * self.steps_per_epoch[record.stage],
            info=f"epoch {record.epoch} loss {record.train_loss:.3f} "
            f"val {record.student_accuracy:.1f}%",
        )

    def on_stage_end(self, stage: str) -> None:
        task = self.tasks[stage]
        self.progress.update(task, completed=self.progress.tasks[task].total)
