"""Adversarial KD: the gradient reversal by hand, the teacher frozen, the discriminator trained,
and a whole job through `kdcore.pipeline.run`."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from kdcore.methods import registry
from kdcore.methods.base import StepOutputs
from kdcore.pipeline import run
from kdcore.validation import parse_spec

from ._helpers import assert_student_loads_back, job


def test_reversal_sign_by_hand_on_a_one_weight_discriminator() -> None:
    # Two classes; D(p) = w·p[0] with one weight w (a Linear(1, 1) on the first probability).
    # L_GAN = softplus(−w·a) + softplus(w·b), a = σ(z_t)[0], b = σ(z_s)[0] (BCE with logits).
    #   ∂L/∂w = −a·σ(−w·a) + b·σ(w·b)              (D descends its own loss)
    #   student: without reversal ∂L/∂b = w·σ(w·b); with it the student gets −β·w·σ(w·b)·∂b/∂z.
    method = registry.build("adversarial", {"alpha": 0.0, "ce_weight": 0.0, "beta": 1.0})
    lin = torch.nn.Linear(1, 1, bias=False)
    with torch.no_grad():
        lin.weight.fill_(0.7)
    method.discriminator = torch.nn.Sequential(_First(), lin)
    z_s = torch.tensor([[0.3, -0.2]], requires_grad=True)
    z_t = torch.tensor([[1.5, 0.0]], requires_grad=True)
    loss = method(StepOutputs(z_s, torch.tensor([0]), z_t))
    w = 0.7
    a = torch.softmax(z_t.detach(), 1)[0, 0].item()
    b_t = torch.softmax(z_s, 1)[0, 0]
    b = b_t.item()
    expected = F.softplus(torch.tensor(-w * a)) + F.softplus(torch.tensor(w * b))
    assert loss.item() == pytest.approx(expected.item(), abs=1e-6)
    loss.backward()
    sig = torch.sigmoid
    dw = -a * sig(torch.tensor(-w * a)) + b * sig(torch.tensor(w * b))
    assert lin.weight.grad is not None
    assert lin.weight.grad.item() == pytest.approx(dw.item(), abs=1e-6)
    (db_dz,) = torch.autograd.grad(b_t, z_s)
    expected_student = -w * sig(torch.tensor(w * b)) * db_dz
    assert z_s.grad is not None
    assert torch.allclose(z_s.grad, expected_student, atol=1e-6)
    assert z_t.grad is None  # the teacher gets no gradient


class _First(torch.nn.Module):
    def forward(self, p: torch.Tensor) -> torch.Tensor:
        return p[:, :1]


def test_discriminator_and_student_get_gradients_teacher_none() -> None:
    torch.manual_seed(0)
    method = registry.build("adversarial")
    z_s = torch.randn(4, 3, requires_grad=True)
    z_t = torch.randn(4, 3, requires_grad=True)
    method(StepOutputs(z_s, torch.tensor([0, 1, -1, 2]), z_t)).backward()
    grads = [p.grad for p in method.discriminator.parameters()]
    assert grads and all(g is not None and g.abs().sum() > 0 for g in grads)
    assert z_s.grad is not None and z_s.grad.abs().sum() > 0
    assert z_t.grad is None


def test_adversarial_job_runs_and_exports_a_student_that_loads_back(tmp_path: Path) -> None:
    spec = parse_spec(job("adv", method={"name": "adversarial", "hidden": 16}))
    report = run(spec, tmp_path).to_json()
    assert report["method"]["name"] == "adversarial"
    assert_student_loads_back(spec, tmp_path, report)


def test_resume_equals_uninterrupted_with_the_lazy_discriminator(tmp_path: Path) -> None:
    """The discriminator's width is set by the first batch (LazyLinear); a run resumed from an
    epoch checkpoint, in a new process with a fresh method, still ends bit-identical."""
    from torch import nn

    from kdcore.callbacks import Callbacks, EpochRecord
    from kdcore.checkpoint import FolderCheckpoints
    from kdcore.data.dataset import Dataset
    from kdcore.spec import TrainSpec
    from kdcore.train import StageContext, Teaching, fit

    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(60, 5, generator=g), torch.randint(0, 3, (60,), generator=g)
    data = Dataset(x[:40], y[:40], x[40:], y[40:], 3, (5,), None, "tiny")
    spec = TrainSpec(epochs=3, batch_size=16, device="cpu", seed=1)

    def student() -> nn.Module:
        torch.manual_seed(0)
        return nn.Sequential(nn.Linear(5, 8), nn.ReLU(), nn.Linear(8, 3))

    def teacher() -> nn.Module:
        torch.manual_seed(5)
        return nn.Linear(5, 3)

    class Crash(Exception):
        pass

    class CrashAfterFirst(Callbacks):
        def on_epoch_end(self, record: EpochRecord) -> None:
            if record.epoch == 1:
                raise Crash

    whole_method = registry.build("adversarial")
    whole = student()
    fit(
        whole,
        whole_method,
        StageContext(name="d", data=data, train=spec, teacher=Teaching(teacher())),
    )
    ckpt = FolderCheckpoints(tmp_path)
    with pytest.raises(Crash):
        fit(
            student(),
            registry.build("adversarial"),
            StageContext(
                name="d",
                data=data,
                train=spec,
                teacher=Teaching(teacher()),
                callbacks=CrashAfterFirst(),
                checkpoints=ckpt,
            ),
        )
    resumed_method = registry.build("adversarial")
    resumed = student()
    res = fit(
        resumed,
        resumed_method,
        StageContext(
            name="d", data=data, train=spec, teacher=Teaching(teacher()), checkpoints=ckpt
        ),
    )
    assert res.resumed_from_epoch == 1
    for (k, a), b in zip(whole.state_dict().items(), resumed.state_dict().values(), strict=True):
        assert torch.equal(a, b), k
    for (k, a), b in zip(
        whole_method.state_dict().items(), resumed_method.state_dict().values(), strict=True
    ):
        assert torch.equal(a, b), k
