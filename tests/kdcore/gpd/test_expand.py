"""Inverse Reparameterization (gpd.md §1): the expanded DT computes the student's function."""

from __future__ import annotations

from typing import Any

import pytest
import torch
from torch import nn

from kdcore.models.registry import build_model
from kdcore.schemes.gpd import GPDBatchNorm2d, expand

ARCHS: dict[str, tuple[tuple[int, ...], dict[str, Any]]] = {
    "mlp": ((20,), {"hidden": [32, 16]}),
    "convnet": ((3, 16, 16), {"channels": [8, 16]}),
    "resnet8": ((3, 16, 16), {}),
    "resnet20": ((3, 16, 16), {}),
    "wrn_16_2": ((3, 16, 16), {}),
    "conv1d": ((2, 32), {}),
    "mlp_dropout": ((20,), {"hidden": [32, 16], "dropout": 0.2}),
}


def _student(arch: str) -> tuple[nn.Module, tuple[int, ...]]:
    """A zoo student with non-trivial BN running statistics (a few train-mode passes)."""
    torch.manual_seed(0)
    shape, kwargs = ARCHS[arch]
    model = build_model(arch.removesuffix("_dropout"), shape, 10, **kwargs).train()
    with torch.no_grad():
        for _ in range(3):
            model(torch.randn(16, *shape) * 2 + 0.5)
    return model, shape


def _params(m: nn.Module) -> int:
    return sum(p.numel() for p in m.parameters())


@pytest.mark.parametrize("arch", list(ARCHS))
@pytest.mark.parametrize("ratio", [2, 3, 4])
@pytest.mark.parametrize("mode", ["train", "eval"])
def test_ir_is_exact(arch: str, ratio: int, mode: str) -> None:
    if arch == "mlp_dropout" and mode == "train":
        pytest.skip("train-mode dropout draws independent masks per replica: not comparable")
    student, shape = _student(arch)
    dt = expand(student, ratio)
    x = torch.randn(8, *shape)
    student.train(mode == "train")
    dt.train(mode == "train")
    with torch.no_grad():
        diff = (dt(x) - student(x)).abs().max().item()
    assert diff <= 1e-5
    # About r² the parameters (less: the input layer and the classifier grow only r×).
    assert 0.5 * ratio**2 < _params(dt) / _params(student) <= ratio**2


def test_train_mode_keeps_running_stats_on_the_students_scale() -> None:
    student, shape = _student("resnet8")
    dt = expand(student, 3)
    x = torch.randn(8, *shape)
    with torch.no_grad():
        student(x), dt(x)
    bn_s, bn_t = student.layer2[0].bn1, dt.layer2[0].bn1
    assert isinstance(bn_t, GPDBatchNorm2d)
    c = bn_s.num_features
    for k in range(3):
        torch.testing.assert_close(bn_t.running_mean[k * c : (k + 1) * c], bn_s.running_mean)
        torch.testing.assert_close(bn_t.running_var[k * c : (k + 1) * c], bn_s.running_var)


def test_structure_and_student_untouched() -> None:
    student, _ = _student("resnet8")
    before = {k: v.clone() for k, v in student.state_dict().items()}
    dt = expand(student, 2)
    assert type(dt) is type(student)
    assert dt.state_dict().keys() == student.state_dict().keys()
    assert dt.conv1.weight.shape == (32, 3, 3, 3)  # first layer: input not widened
    assert dt.fc.weight.shape == (10, 128)  # last layer: output not widened
    assert dt.feature_dim == 2 * student.feature_dim
    for k, v in student.state_dict().items():
        assert torch.equal(v, before[k])


@pytest.mark.parametrize("arch", ["mlp", "resnet8"])
def test_noise_changes_the_function_slightly(arch: str) -> None:
    student, shape = _student(arch)
    student.eval()
    x = torch.randn(8, *shape)
    diffs = []
    for noise in (1e-4, 1e-2):
        gen = torch.Generator().manual_seed(1)
        dt = expand(student, 2, noise=noise, generator=gen).eval()
        with torch.no_grad():
            diffs.append((dt(x) - student(x)).abs().max().item())
    assert 0 < diffs[0] < diffs[1] < 1e-1


class _WithAttention(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Linear(8, 16)
        self.blocks = nn.ModuleList([nn.ModuleDict({"attn": nn.MultiheadAttention(16, 2)})])
        self.head = nn.Linear(16, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.embed(x)
        h = self.blocks[0]["attn"](h, h, h)[0]
        return self.head(h)


def test_unsupported_layers_are_named() -> None:
    with pytest.raises(ValueError, match=r"'blocks\.0\.attn' \(MultiheadAttention\)"):
        expand(_WithAttention(), 2)
    vit = build_model("vit_tiny", (3, 16, 16), 10, dim=16, depth=1, heads=2)
    with pytest.raises(ValueError, match=r"GPD cannot expand module 'blocks\.0\.norm1'"):
        expand(vit, 2)
    grouped = nn.Sequential(nn.Conv2d(4, 4, 3, groups=4), nn.Flatten(1), nn.LazyLinear(2))
    with pytest.raises(ValueError, match=r"module '0' \(Conv2d with groups=4\)"):
        expand(grouped, 2)


def test_unsupported_operation_on_widened_channels() -> None:
    class Shift(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc1, self.fc2 = nn.Linear(4, 8), nn.Linear(8, 2)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.fc2(self.fc1(x) + 1.0)  # not homogeneous: (h + 1)/r != h/r + 1

    with pytest.raises(ValueError, match="operation 'add'"):
        expand(Shift(), 2)


@pytest.mark.parametrize("ratio", [1, 0, 2.0, True])
def test_bad_ratio(ratio: Any) -> None:
    with pytest.raises(ValueError, match="ratio"):
        expand(nn.Sequential(nn.Linear(2, 2)), ratio)
