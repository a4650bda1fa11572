"""Shared tiny jobs for the scheme tests: digits, a conv teacher trained one epoch in the job, a
small student, one epoch, safetensors export only."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

from kdcore.callbacks import Callbacks
from kdcore.data import load_data
from kdcore.evaluate import accuracy
from kdcore.export import load_safetensors_student
from kdcore.spec import DataSpec, JobSpec

TEACHER: dict[str, Any] = {
    "arch": "convnet",
    "kwargs": {"channels": [8, 16]},
    "train": {"epochs": 1, "batch_size": 64},
}
STUDENT: dict[str, Any] = {"arch": "mlp", "kwargs": {"hidden": [16]}}


class Stages(Callbacks):
    """Records the stages started and, in order, those that ran at least one training step."""

    def __init__(self) -> None:
        self.started: list[str] = []
        self.trained: list[str] = []

    def on_stage_start(self, stage: str, epochs: int, steps_per_epoch: int) -> None:
        self.started.append(stage)

    def on_step(self, stage: str, epoch: int, step: int, loss: float) -> None:
        if stage not in self.trained:
            self.trained.append(stage)


def job(name: str, **over: Any) -> dict[str, Any]:
    spec: dict[str, Any] = {
        "name": name,
        "teacher": TEACHER,
        "student": STUDENT,
        "data": {"source": "digits"},
        "method": {"name": "kd"},
        "train": {"epochs": 1, "batch_size": 64, "optimizer": {"name": "adam", "lr": 0.003}},
        "evaluate": {"latency_runs": 1, "latency_batch_size": 4},
        "export": ["safetensors"],
    }
    spec.update(over)
    return {k: v for k, v in spec.items() if v is not None}


def assert_student_loads_back(spec: JobSpec, out: Path, report: dict[str, Any]) -> None:
    student = load_safetensors_student(out / "student.safetensors", out / "student.json")
    data = load_data(spec.data)
    got = accuracy(student, data.x_val, data.y_val, device=torch.device("cpu"))
    assert got == pytest.approx(report["student"]["accuracy"], abs=1e-3)


def fit_to_digits(
    model: nn.Module, logits: Callable[[Any], torch.Tensor] = lambda out: out, steps: int = 60
) -> nn.Module:
    """`model` trained a few full-batch steps on the digits as the data holds them (what a
    teacher file receives by default): a teacher file far from chance, which the check before
    distilling lets through. `logits` picks the logits from the model's output."""
    data = load_data(DataSpec(source="digits", normalize=False))
    x = data.x_train
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    model.train()
    for _ in range(steps):
        opt.zero_grad()
        torch.nn.functional.cross_entropy(logits(model(x)), data.y_train).backward()
        opt.step()
    return model.eval()
