"""Inverse Reparameterization (gpd.md §1): the expanded DT computes the student's function."""

from __future__ import annotations

from collections.abc import Callable
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
    "vit_tiny": ((3, 16, 16), {"dim": 16, "depth": 2, "heads": 2}),
    "mobilenet_tiny": ((3, 16, 16), {"channels": [8, 16, 16], "stem": 8}),
    "grouped": ((3, 8, 8), {}),
}


def _grouped(shape: tuple[int, ...], num_classes: int) -> nn.Module:
    """Grouped (groups=2) and depthwise convs with biases, between plain conv-BN-ReLUs."""
    return nn.Sequential(
        nn.Conv2d(shape[0], 16, 3, padding=1),
        nn.BatchNorm2d(16),
        nn.ReLU(),
        nn.Conv2d(16, 24, 3, padding=1, groups=2),
        nn.BatchNorm2d(24),
        nn.ReLU(),
        nn.Conv2d(24, 24, 3, stride=2, padding=1, groups=24),
        nn.ReLU(),
        nn.Conv2d(24, 32, 1),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(1),
        nn.Linear(32, num_classes),
    )


#: Students that are not zoo architectures.
BUILDERS: dict[str, Callable[[tuple[int, ...], int], nn.Module]] = {"grouped": _grouped}


def _student(arch: str) -> tuple[nn.Module, tuple[int, ...]]:
    """A zoo student with non-trivial BN running statistics (a few train-mode passes)."""
    torch.manual_seed(0)
    shape, kwargs = ARCHS[arch]
    if arch in BUILDERS:
        model = BUILDERS[arch](shape, 10).train()
    else:
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
    # About r² the parameters (less: the input layer and the classifier grow only r×; so do
    # grouped convolutions, whose groups multiply by r).
    low = ratio if arch == "grouped" else 0.5 * ratio**2
    assert low < _params(dt) / _params(student) <= ratio**2


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


@pytest.mark.parametrize("arch", ["mlp", "resnet8", "vit_tiny", "mobilenet_tiny"])
def test_noise_changes_the_function_slightly(arch: str) -> None:
    student, shape = _student(arch)
    student.eval()
    x = torch.randn(8, *shape)
    diffs = []
    for noise in (1e-4, 1e-3):
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
    with pytest.raises(ValueError, match=r"module '1' \(GroupNorm\)"):
        expand(nn.Sequential(nn.Conv2d(3, 4, 3), nn.GroupNorm(2, 4), nn.Flatten(1)), 2)
    with pytest.raises(ValueError, match=r"module '1' \(Softmax\)"):
        expand(nn.Sequential(nn.Linear(3, 4), nn.Softmax(-1), nn.Linear(4, 2)), 2)


def test_vit_grouped_and_depthwise_convs_are_supported() -> None:
    vit = build_model("vit_tiny", (3, 16, 16), 10, dim=16, depth=1, heads=2)
    dt = expand(vit, 2)
    assert dt.blocks[0].attn.heads == 4 and dt.blocks[0].attn.head_dim == 8
    assert dt.cls_token.shape == (1, 1, 32) and dt.pos_embed.shape == (1, 17, 32)
    grouped = nn.Sequential(nn.Conv2d(4, 4, 3, groups=4), nn.Flatten(1), nn.Linear(4, 2))
    dt = expand(grouped, 2)  # on the raw input: unchanged; the Linear widens nothing
    assert dt[0].groups == 4
    mobile = build_model("mobilenet_tiny", (3, 8, 8), 10)
    dt = expand(mobile, 3)
    assert dt.block1.depthwise.conv.groups == 3 * mobile.block1.depthwise.conv.groups


class _Free(nn.Module):
    """A model with its own tensors: `bias` is added to widened activations, `scale` multiplies
    them (not homogeneous in a tensor)."""

    def __init__(self, multiply: bool) -> None:
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(4, 8), nn.Linear(8, 2)
        self.bias = nn.Parameter(torch.randn(8))
        self.scale = nn.Parameter(torch.randn(8))
        self.multiply = multiply

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.fc1(x)
        h = h * self.scale if self.multiply else h + self.bias
        return self.fc2(h)


def test_free_tensors_are_widened_or_refused() -> None:
    model = _Free(multiply=False)
    dt = expand(model, 3)
    assert dt.bias.shape == (24,)
    x = torch.randn(5, 4)
    torch.testing.assert_close(dt(x), model(x))
    with pytest.raises(ValueError, match="operation 'mul'"):
        expand(_Free(multiply=True), 2)


class _Ops(nn.Module):
    """One operation on widened channels, chosen by name."""

    def __init__(self, op: str) -> None:
        super().__init__()
        self.op = op
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.fc = nn.Linear(4 * 4 * 4, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv(x)
        if self.op == "flatten0":
            return self.fc(h.flatten(0, 1).reshape(x.shape[0], -1))
        if self.op == "cut":
            return self.fc(torch.cat([h[:, :2], h[:, :2]], 1).flatten(1))
        if self.op == "cat":
            return self.fc(torch.cat([h[:, :, :2], h[:, :, 2:]], 1).flatten(1))
        if self.op == "size":
            return self.fc(h.view(x.shape[0], h.shape[1] * 16))
        if self.op == "sigmoid":  # not homogeneous, and no f(r·z)/r form as a function
            return self.fc(torch.sigmoid(h).flatten(1))
        return self.fc(h.transpose(2, 3).flatten(1))  # "ok": transpose of spatial axes


@pytest.mark.parametrize(
    ("op", "needle"),
    [
        ("flatten0", "operation 'flatten'.*mixing the replicas"),
        ("cut", "operation 'getitem'.*cuts the widened channel axis"),
        ("cat", "operation 'cat'.*widened channel axis"),
        ("size", "operation 'getitem'.*size of the widened channel axis"),
        ("sigmoid", "operation 'sigmoid'.*no inverse-reparameterization rule"),
    ],
)
def test_operations_that_mix_or_cut_channels_are_refused(op: str, needle: str) -> None:
    with pytest.raises(ValueError, match=needle):
        expand(_Ops(op), 2)


def test_operations_on_other_axes_keep_the_function() -> None:
    model = _Ops("ok").eval()
    x = torch.randn(3, 3, 4, 4)
    torch.testing.assert_close(expand(model, 2)(x), model(x))


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
