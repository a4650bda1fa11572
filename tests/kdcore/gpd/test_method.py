"""The GPD loss (gpd.md §4) against hand-computed values, and the trainee the loop trains."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from kdcore.methods import registry
from kdcore.methods.base import StepOutputs
from kdcore.methods.gpd import DT_LAYER, GapPreserving, soft_cross_entropy
from kdcore.methods.kd import kd_kl
from kdcore.models.registry import build_model
from kdcore.schemes.gpd.trainee import GPDTrainee


def test_sce_by_hand() -> None:
    # z = [ln 3, 0] → σ = [0.75, 0.25]; p = [1, 0]:
    # 0.9 · (−ln 0.75) + 0.1 · (−(ln 0.75 + ln 0.25) / 2) = 0.258914 + 0.083698 = 0.342612
    z = torch.tensor([[math.log(3.0), 0.0]])
    p = torch.tensor([[1.0, 0.0]])
    assert soft_cross_entropy(z, p).item() == pytest.approx(0.342612, abs=1e-6)
    # Equal logits: both parts are ln 2 whatever p is.
    assert soft_cross_entropy(torch.zeros(3, 2), torch.tensor([[0.3, 0.7]] * 3)).item() == (
        pytest.approx(math.log(2.0), abs=1e-6)
    )


def _method(**params: object) -> GapPreserving:
    m = registry.build("gpd", dict(params))
    assert isinstance(m, GapPreserving)
    return m


def test_losses_by_their_definition() -> None:
    g = torch.Generator().manual_seed(0)
    zs, zd, zt = (torch.randn(6, 4, generator=g) for _ in range(3))
    y = torch.tensor([0, 1, 2, 3, -1, 1])  # one unlabelled row: no CE for it
    m = _method(kd="kd", temperature=2.0, sce_weight=3.0)
    l_dt, l_s = m.losses(zd, zs, y, zt)
    lab = y >= 0
    ce = lambda z: F.cross_entropy(z[lab], y[lab])  # noqa: E731
    p_dt = F.softmax(zd, 1)
    torch.testing.assert_close(l_dt, ce(zd) + kd_kl(zd, zt, 2.0))
    torch.testing.assert_close(l_s, ce(zs) + kd_kl(zs, zt, 2.0) + 3 * soft_cross_entropy(zs, p_dt))
    # No static teacher (scratch/finetune): CE terms and the DT → student term only.
    l_dt, l_s = _method(scenario="scratch", sce_weight=0.5).losses(zd, zs, y, None)
    torch.testing.assert_close(l_dt, ce(zd))
    torch.testing.assert_close(l_s, ce(zs) + 0.5 * soft_cross_entropy(zs, p_dt))


def test_dt_logits_are_a_fixed_target_of_the_student_term() -> None:
    zs = torch.randn(4, 3, requires_grad=True)
    zd = torch.randn(4, 3, requires_grad=True)
    y = torch.tensor([0, 1, 2, 0])
    _, l_s = _method(scenario="scratch").losses(zd, zs, y, None)
    l_s.backward()
    assert zd.grad is None and zs.grad is not None and zs.grad.abs().sum() > 0


def test_scenario_decides_whether_a_teacher_is_needed() -> None:
    assert _method().needs_teacher is True
    assert _method(scenario="scratch").needs_teacher is False
    assert _method(scenario="finetune").needs_teacher is False


def test_dkd_term_matches_the_dkd_method() -> None:
    g = torch.Generator().manual_seed(1)
    zs, zt = torch.randn(5, 4, generator=g), torch.randn(5, 4, generator=g)
    y = torch.tensor([0, 1, 2, 3, 0])
    ours = _method(kd="dkd", dkd_alpha=1.0, dkd_beta=2.0, temperature=1.0)
    ref = registry.build("dkd", {"alpha": 1.0, "beta": 2.0, "temperature": 1.0, "warmup": 0})
    expected = ref.distill_loss(StepOutputs(zs, y, zt))  # type: ignore[attr-defined]
    torch.testing.assert_close(ours.kd_term(zs, zt, y), expected)


def _trainee(ratio: int = 2) -> GPDTrainee:
    torch.manual_seed(0)
    student = build_model("convnet", (1, 8, 8), 10, channels=[4, 8])
    return GPDTrainee(student, ratio, noise=0.0, seed=0)


def test_trainee_runs_the_dt_in_train_mode_only() -> None:
    t = _trainee()
    seen: list[torch.Tensor] = []
    t.get_submodule(DT_LAYER).register_forward_hook(lambda _m, _i, out: seen.append(out))
    x = torch.randn(6, 1, 8, 8)
    t.train()(x)
    assert len(seen) == 1
    t.eval()(x)
    assert len(seen) == 1  # evaluation measures the student alone


def test_one_step_trains_the_shared_slice_with_both_losses() -> None:
    """The DT loss reaches the whole DT, the student loss only its slice (the leading block of
    each parameter); the optimizer steps on their sum, and the extracted student is the
    trainee's output after the step."""
    t = _trainee().train()
    method = _method(scenario="scratch")
    x, y = torch.randn(8, 1, 8, 8), torch.randint(0, 10, (8,))
    z_dt, z_s = t.pair.dt(x), t.pair.student_forward(x)
    l_dt, l_s = method.losses(z_dt, z_s, y, None)
    w = t.pair.dt.block1.conv.weight  # (2·4, 1, 3, 3): the student's slice is rows :4
    g_dt, g_s = torch.autograd.grad(l_dt, w, retain_graph=True), torch.autograd.grad(l_s, w)
    assert g_s[0][4:].abs().sum() == 0 and g_s[0][:4].abs().sum() > 0
    assert g_dt[0][4:].abs().sum() > 0

    t.zero_grad()
    loss = method(StepOutputs(t(x), y, None, {DT_LAYER: t.pair.dt(x)}))
    loss.backward()
    assert w.grad is not None
    torch.testing.assert_close(w.grad, g_dt[0] + g_s[0])
    torch.optim.SGD(t.parameters(), lr=0.1).step()
    t.eval()
    with torch.no_grad():
        torch.testing.assert_close(t.student()(x), t(x), rtol=0, atol=0)
