"""Teacher-free KD (virtual teacher) against a value worked out by hand."""

from __future__ import annotations

import math

import pytest
import torch

from kdcore.methods import registry
from kdcore.methods.base import StepOutputs


def test_tf_kd_matches_the_hand_computed_value_and_ignores_unlabelled_rows() -> None:
    # K = 2 classes, defaults a = 0.99, τ = 20, m = 100, α = 0.1; row 0 has label 0 and
    # student logits z = (ln 3, 0), so softmax(z) = (0.75, 0.25).
    #   virtual teacher p_d = (0.99, 0.01); p_d/τ = (0.0495, 0.0005)
    #   q = softmax(p_d/τ): q0 = 1/(1 + e^-(0.0495 - 0.0005)) = 1/(1 + e^-0.049) = 0.5122475
    #                       q1 = 0.4877525
    #   KL(q ‖ p) = 0.5122475·ln(0.5122475/0.75) + 0.4877525·ln(0.4877525/0.25)
    #             = 0.5122475·(−0.3812652) + 0.4877525·(0.6683471)
    #             = −0.1953022 + 0.3259879 = 0.1306858
    #   CE = −ln 0.75 = 0.2876821
    #   L = (1 − α)·CE + α·m·KL = 0.9·0.2876821 + 0.1·100·0.1306858
    #     = 0.2589139 + 1.3068576 = 1.5657715
    # Row 1 is unlabelled (−1): no virtual teacher and no CE, so it changes nothing.
    method = registry.build("tf_kd")
    assert not method.needs_teacher
    z = torch.tensor([[math.log(3.0), 0.0], [5.0, -2.0]], requires_grad=True)
    out = StepOutputs(z, torch.tensor([0, -1]))
    assert method.distill_loss(out).item() == pytest.approx(100 * 0.1306858, abs=1e-4)
    loss = method(out)
    assert loss.item() == pytest.approx(1.5657715, abs=1e-5)
    loss.backward()
    assert z.grad is not None and z.grad[0].abs().sum() > 0
    assert torch.equal(z.grad[1], torch.zeros(2))


def test_tf_kd_batch_without_labels_is_zero_and_differentiable() -> None:
    z = torch.randn(3, 4, requires_grad=True)
    loss = registry.build("tf_kd", {"alpha": 1.0})(StepOutputs(z, torch.full((3,), -1)))
    assert loss.item() == 0.0
    loss.backward()


def test_tf_kd_is_zero_when_the_student_matches_the_softened_virtual_teacher() -> None:
    # The KL vanishes when softmax(z) = softmax(p_d/τ), i.e. z = p_d/τ (up to a constant).
    p = {"alpha": 1.0, "temperature": 2.0, "correct_prob": 0.7}
    y = torch.tensor([2, 0])
    p_d = torch.full((2, 3), 0.15).scatter(1, y[:, None], 0.7)
    out = StepOutputs(p_d / 2.0 + 3.0, y)
    assert registry.build("tf_kd", p)(out).item() == pytest.approx(0.0, abs=1e-5)  # float32
