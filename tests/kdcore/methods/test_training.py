"""Methods inside real models: gradients reach the student and the adapters, never the teacher;
an adapter is checkpointed, so a resumed run ends exactly where an uninterrupted one does."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from torch import Tensor, nn

from kdcore.callbacks import Callbacks, EpochRecord
from kdcore.checkpoint import FolderCheckpoints
from kdcore.data.dataset import Dataset
from kdcore.methods import registry
from kdcore.methods.base import StepOutputs
from kdcore.models.registry import build_model
from kdcore.spec import TrainSpec
from kdcore.train import StageContext, Teaching, _attach_feature_hooks, fit

SHAPE = (1, 8, 8)
BLOCKS = {"student_layers": ["block1", "block2"], "teacher_layers": ["block1", "block2"]}
CASES: dict[str, dict[str, Any]] = {
    "kd": {},
    "dkd": {"warmup": 0},
    "fitnets": BLOCKS,
    "at": BLOCKS,
    "sp": {"student_layers": ["block2"], "teacher_layers": ["block2"]},
    "rkd": {},
    "cc": {},
    "fsp": {"student_pairs": [["block1", "block2"]], "teacher_pairs": [["block1", "block2"]]},
    "combined": {"terms": [{"name": "kd"}, {"name": "fitnets", **BLOCKS}, {"name": "rkd"}]},
}


def models(name: str) -> tuple[nn.Module, nn.Module]:
    torch.manual_seed(0)
    teacher = build_model("convnet", SHAPE, 4, channels=[8, 16])
    # FSP compares matrices entry by entry: the student needs the teacher's widths there.
    student = build_model("convnet", SHAPE, 4, channels=[8, 16] if name == "fsp" else [4, 6])
    return student, teacher


@pytest.mark.parametrize("name", sorted(CASES))
def test_gradient_reaches_student_and_adapters_never_the_teacher(name: str) -> None:
    student, teacher = models(name)
    method = registry.build(name, CASES[name])
    x = torch.randn(6, *SHAPE, generator=torch.Generator().manual_seed(1))
    hooks = _attach_feature_hooks(student, teacher, method, x[:2])
    # The teacher is left trainable and run with autograd on: only the methods' own
    # stop-gradients can keep it out of the backward pass.
    teacher.eval()
    teacher_logits = teacher(x)
    out = StepOutputs(
        student(x),
        torch.tensor([0, 1, 2, 3, -1, 0]),
        teacher_logits,
        hooks[0].take(),
        hooks[1].take(),
    )
    loss = method(out)
    assert torch.isfinite(loss)
    loss.backward()
    for h in hooks:
        h.remove()
    assert all(p.grad is None for p in teacher.parameters())
    for pname, p in student.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), pname
    assert sum(p.grad.abs().sum().item() for p in student.parameters()) > 0
    adapters = list(method.parameters())
    assert (len(adapters) > 0) == (name in ("fitnets", "combined"))
    for p in adapters:
        assert p.grad is not None and p.grad.abs().sum() > 0


def test_feature_gradient_reaches_the_hooked_layers_without_ce() -> None:
    student, teacher = models("at")
    method = registry.build("at", {**BLOCKS, "ce_weight": 0.0})
    x = torch.randn(6, *SHAPE, generator=torch.Generator().manual_seed(2))
    s_hooks, t_hooks = _attach_feature_hooks(student, teacher, method, x[:2])
    with torch.no_grad():
        t_logits = teacher(x)
    logits = student(x)
    method(
        StepOutputs(
            logits, torch.zeros(6, dtype=torch.long), t_logits, s_hooks.take(), t_hooks.take()
        )
    ).backward()
    grads = {n: p.grad for n, p in student.named_parameters()}
    assert grads["block1.conv.weight"].abs().sum() > 0
    assert grads["fc.weight"] is None  # AT alone says nothing about the classifier


def tiny_images(n: int = 80) -> Dataset:
    g = torch.Generator().manual_seed(3)
    y = torch.randint(0, 4, (n,), generator=g)
    x = torch.randn(n, *SHAPE, generator=g) + y.float().view(-1, 1, 1, 1)
    y_train = y.clone()
    y_train[::3] = -1
    return Dataset(x[:60], y_train[:60], x[60:], y[60:], 4, SHAPE, None, "tiny")


SPEC = TrainSpec(epochs=3, batch_size=16, seed=5, device="cpu", optimizer={"name": "adam"})


class Crash(Exception):
    pass


class CrashAfter(Callbacks):
    def __init__(self, epoch: int):
        self.epoch = epoch

    def on_epoch_end(self, record: EpochRecord) -> None:
        if record.epoch == self.epoch:
            raise Crash


def state(m: nn.Module) -> dict[str, Tensor]:
    return {k: v.clone() for k, v in m.state_dict().items()}


def test_fitnets_regressor_is_trained_checkpointed_and_resumed(tmp_path: Path) -> None:
    params = {**BLOCKS, "beta": 10.0}
    student, teacher = models("fitnets")
    whole = registry.build("fitnets", params)
    full = fit(
        student,
        whole,
        StageContext(name="d", data=tiny_images(), train=SPEC, teacher=Teaching(teacher)),
    )
    assert not full.teacher_cache_used  # teacher features are needed live

    ckpt = FolderCheckpoints(tmp_path)
    s1, t1 = models("fitnets")
    with pytest.raises(Crash):
        fit(
            s1,
            registry.build("fitnets", params),
            StageContext(
                name="d",
                data=tiny_images(),
                train=SPEC,
                teacher=Teaching(t1),
                callbacks=CrashAfter(2),
                checkpoints=ckpt,
            ),
        )
    s2, t2 = models("fitnets")
    torch.manual_seed(1234)  # a new process: its fresh regressor starts elsewhere
    resumed = registry.build("fitnets", params)
    res = fit(
        s2,
        resumed,
        StageContext(
            name="d", data=tiny_images(), train=SPEC, teacher=Teaching(t2), checkpoints=ckpt
        ),
    )
    assert res.resumed_from_epoch == 2
    assert [r.train_loss for r in res.history] == [r.train_loss for r in full.history]
    for mine, theirs in ((student, s2), (whole, resumed)):
        a, b = state(mine), state(theirs)
        assert a.keys() == b.keys()
        for k in a:
            assert torch.equal(a[k], b[k]), k
    assert any(torch.count_nonzero(v) for v in state(resumed).values())


@pytest.mark.parametrize("name", sorted(CASES))
def test_losses_stay_float32_under_mixed_precision(name: str) -> None:
    # The trainer autocasts on CUDA; CPU bfloat16 autocast exercises the same dtype paths.
    student, teacher = models(name)
    method = registry.build(name, CASES[name])
    x = torch.randn(6, *SHAPE, generator=torch.Generator().manual_seed(4))
    hooks = _attach_feature_hooks(student, teacher, method, x[:2])
    with torch.autocast("cpu", dtype=torch.bfloat16):
        with torch.no_grad():
            t_logits = teacher(x)
        s_logits = student(x)
        s_feats, t_feats = hooks[0].take(), hooks[1].take()
        loss = method(
            StepOutputs(s_logits, torch.zeros(6, dtype=torch.long), t_logits, s_feats, t_feats)
        )
    assert loss.dtype == torch.float32 and torch.isfinite(loss)
    loss.backward()
