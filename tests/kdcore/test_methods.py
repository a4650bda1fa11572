"""KD and CE losses against values worked out by hand (see the comments)."""

import math

import pytest
import torch

from kdcore.methods import registry
from kdcore.methods.base import StepOutputs, masked_cross_entropy

# Student logits [1, 2, 3], teacher [3, 2, 1], T = 2:
#   p_t = softmax([1.5, 1, .5]) = [.50648, .30720, .18632], p_s is its mirror image,
#   KL(p_t ‖ p_s) = (p_t0 − p_t2) · ln(e^1.5 / e^.5) = .32016; × T² = 1.28063.
#   CE(s, y=0) = ln(1 + e + e²) = 2.40761.
KL_T2 = 1.2806266713
CE_ROW = 2.4076059644


def outputs(targets: list[int]) -> StepOutputs:
    s = torch.tensor([[1.0, 2.0, 3.0], [0.0, 0.0, 0.0]])[: len(targets)]
    t = torch.tensor([[3.0, 2.0, 1.0], [0.0, 0.0, 0.0]])[: len(targets)]
    return StepOutputs(student_logits=s, targets=torch.tensor(targets), teacher_logits=t)


def test_ce_by_hand() -> None:
    assert math.isclose(CE_ROW, math.log(1 + math.e + math.e**2), rel_tol=1e-9)
    loss = registry.build("ce")(outputs([0]))
    assert loss.item() == pytest.approx(CE_ROW, rel=1e-6)


def test_kd_by_hand() -> None:
    kd = registry.build("kd", {"temperature": 2.0, "alpha": 0.5})
    assert kd(outputs([0])).item() == pytest.approx(0.5 * KL_T2 + 0.5 * CE_ROW, rel=1e-6)


def test_kd_pure_soft_targets() -> None:
    kd = registry.build("kd", {"temperature": 2.0, "alpha": 1.0})
    assert kd(outputs([0])).item() == pytest.approx(KL_T2, rel=1e-6)


def test_kd_unlabelled_rows_use_teacher_only() -> None:
    # Row 2 has equal student and teacher logits (KL 0) and no label: KL is averaged over both
    # rows, CE over the one labelled row.
    kd = registry.build("kd", {"temperature": 2.0, "alpha": 0.5})
    assert kd(outputs([0, -1])).item() == pytest.approx(0.5 * KL_T2 / 2 + 0.5 * CE_ROW, rel=1e-6)


def test_masked_ce_without_labels_is_zero() -> None:
    loss = masked_cross_entropy(torch.randn(3, 4), torch.tensor([-1, -1, -1]))
    assert loss.item() == 0.0


def test_kd_gradient_reaches_student_only() -> None:
    s = torch.randn(4, 5, requires_grad=True)
    t = torch.randn(4, 5, requires_grad=True)
    loss = registry.build("kd")(StepOutputs(s, torch.tensor([0, 1, 2, -1]), t.detach()))
    loss.backward()
    assert s.grad is not None and s.grad.abs().sum() > 0
    assert t.grad is None


def test_registry_lists_methods() -> None:
    assert {"ce", "kd"} <= set(registry.names())
    with pytest.raises(KeyError, match="known: " + ", ".join(registry.names())):
        registry.get("kdd")
