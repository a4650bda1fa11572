"""`teacher.mode`: eval (running BatchNorm statistics) or train (batch statistics); either way the
teacher's parameters never get a gradient and its running statistics never move."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import Tensor, nn

from kdcore.data import load_data
from kdcore.methods import registry as methods
from kdcore.methods.base import StepOutputs
from kdcore.methods.kd import HintonKD, KDParams
from kdcore.models.registry import build_model
from kdcore.pipeline import run
from kdcore.spec import DataSpec, SpecError, TrainSpec
from kdcore.train import StageContext, Teaching, fit, freeze
from kdcore.validation import parse_spec

from ._helpers import assert_student_loads_back, job


def _bn_teacher(data: Any) -> nn.Module:
    torch.manual_seed(0)
    teacher = build_model("convnet", data.input_shape, data.num_classes, channels=[4, 8])
    # Give BatchNorm non-trivial running statistics, as a trained teacher has.
    for m in teacher.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-1, 1)
            m.running_var.uniform_(0.5, 2)
    return teacher


class SpyKD(HintonKD):
    """KD that records the teacher logits it was given."""

    def forward(self, out: StepOutputs) -> Tensor:
        assert out.teacher_logits is not None
        self.seen.append(out.teacher_logits.clone())
        return super().forward(out)


@pytest.mark.parametrize("mode", ["eval", "train"])
def test_frozen_teacher_never_gets_gradients_nor_new_statistics(mode: str) -> None:
    data = load_data(DataSpec(source="digits"))
    teacher = _bn_teacher(data)
    before = copy.deepcopy(teacher.state_dict())
    kd = methods.build("at", {"student_layers": ["block1"], "teacher_layers": ["block1"]})
    student = build_model("convnet", data.input_shape, data.num_classes, channels=[2, 4])
    res = fit(
        student,
        kd,
        StageContext(
            name="distill",
            data=data,
            train=TrainSpec(epochs=1, batch_size=256),
            teacher=Teaching(teacher, mode=mode),
        ),
    )
    assert res.history and not res.teacher_cache_used
    assert all(p.grad is None and not p.requires_grad for p in teacher.parameters())
    after = teacher.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)  # running stats included
    assert teacher.training is (mode == "train")


def test_train_mode_uses_batch_statistics_and_is_not_cached() -> None:
    data = load_data(DataSpec(source="digits"))
    teacher = _bn_teacher(data)
    student = build_model("mlp", data.input_shape, data.num_classes, hidden=[8])
    spy = SpyKD(KDParams())
    spy.seen = []
    train = TrainSpec(epochs=1, batch_size=len(data.x_train))  # one batch: the whole set
    res = fit(
        student,
        spy,
        StageContext(name="s", data=data, train=train, teacher=Teaching(teacher, mode="train")),
    )
    assert not res.teacher_cache_used
    # What the teacher gave equals a forward with batch statistics, in the batch's order.
    reference = copy.deepcopy(teacher)
    for m in reference.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean, m.running_var = None, None  # type: ignore[assignment]
    g = torch.Generator().manual_seed(0)
    order = torch.randperm(len(data.x_train), generator=g)
    with torch.no_grad():
        want = reference.train()(data.x_train[order])
        eval_out = freeze(copy.deepcopy(teacher))(data.x_train[order])
    assert torch.allclose(spy.seen[0], want, atol=1e-5)
    assert not torch.allclose(spy.seen[0], eval_out, atol=1e-3)


def test_train_mode_needs_an_architecture() -> None:
    with pytest.raises(SpecError, match=r"teacher: teacher\.mode train needs"):
        parse_spec(job("m", teacher={"torchscript": "t.pt", "mode": "train"}))
    with pytest.raises(SpecError, match=r"teacher\.mode"):
        parse_spec(job("m", teacher={"torchscript": "t.pt", "mode": "training"}))


def test_train_mode_job_end_to_end(tmp_path: Path) -> None:
    from ._helpers import TEACHER

    spec = parse_spec(job("mode-train", teacher={**TEACHER, "mode": "train"}))
    report = run(spec, tmp_path).to_json()
    assert report["teacher_cache"] is False
    assert report["spec"]["teacher"]["mode"] == "train"
    assert_student_loads_back(spec, tmp_path, report)
