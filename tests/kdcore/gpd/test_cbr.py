"""Channel-Branch Reparameterization (gpd.md §3): branches merge exactly, survive IR and slicing."""

from __future__ import annotations

from typing import Any

import pytest
import torch
from torch import nn

from kdcore.models.registry import build_model
from kdcore.schemes.gpd import expand
from kdcore.schemes.gpd.cbr import BranchConv2d, BranchDWConv2d, BranchLinear, merge, to_branches
from kdcore.schemes.gpd.shared import SharedPair

ARCHS: dict[str, tuple[tuple[int, ...], dict[str, Any]]] = {
    "mlp": ((20,), {"hidden": [32, 16]}),
    "convnet": ((3, 16, 16), {"channels": [8, 16]}),
    "resnet8": ((3, 16, 16), {}),
    "biasnet": ((3, 12, 12), {}),
    "dwnet": ((3, 12, 12), {}),
}


def _plain(arch: str) -> tuple[nn.Module, tuple[int, ...]]:
    torch.manual_seed(0)
    shape, kwargs = ARCHS[arch]
    if arch == "biasnet":  # convs with biases, including a last conv-free Linear head
        model: nn.Module = nn.Sequential(
            nn.Conv2d(3, 6, 3, padding=1),
            nn.ReLU(),
            nn.Conv2d(6, 8, 3, padding=1),
            nn.ReLU(),
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(1),
            nn.Linear(8, 5),
        )
    elif arch == "dwnet":  # depthwise-separable: depthwise 3×3 (with bias), BN, pointwise
        model = nn.Sequential(
            nn.Conv2d(3, 8, 3, padding=1, bias=False),
            nn.BatchNorm2d(8),
            nn.ReLU(),
            nn.Conv2d(8, 8, 3, padding=1, groups=8),
            nn.BatchNorm2d(8),
            nn.ReLU(),
            nn.Conv2d(8, 12, 1),
            nn.ReLU(),
            nn.Conv2d(12, 12, 3, padding=1, groups=12, bias=False),
            nn.ReLU(),
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(1),
            nn.Linear(12, 5),
        )
    else:
        model = build_model(arch, shape, 10, **kwargs)
    return model.train(), shape


def _warm(model: nn.Module, shape: tuple[int, ...]) -> nn.Module:
    """Non-trivial BatchNorm running statistics (a few train-mode passes)."""
    model.train()
    with torch.no_grad():
        for _ in range(3):
            model(torch.randn(16, *shape) * 2 + 0.5)
    return model


def _branched(arch: str) -> tuple[nn.Module, tuple[int, ...]]:
    """A `fresh` branched model with every branch and scale non-trivial."""
    plain, shape = _plain(arch)
    model = to_branches(plain, init="fresh")
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, (BranchConv2d, BranchDWConv2d, BranchLinear)):
                m.scale.mul_(1 + 0.5 * torch.randn_like(m.scale))
                if m.bias is not None:
                    m.bias.normal_(0, 0.1)
    return _warm(model, shape), shape


def _randomize_(m: nn.Module) -> None:
    with torch.no_grad():
        for p in m.parameters():
            p.normal_()


@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("shape", [(3, 5), (4, 4), (1, 7)])
def test_conv_branch_forward_equals_merged(bias: bool, shape: tuple[int, int]) -> None:
    torch.manual_seed(1)
    block = BranchConv2d(*shape, bias=bias, mid_channels=6)
    _randomize_(block)
    x = torch.randn(2, shape[0], 9, 7)
    with torch.no_grad():
        ref = block.branch_forward(x)
        assert (block(x) - ref).abs().max().item() <= 1e-5 * ref.abs().max().item()
        assert (block.to_conv()(x) - ref).abs().max().item() <= 1e-5 * ref.abs().max().item()


def test_conv_branches_at_default_scale_are_exact_to_1e5() -> None:
    torch.manual_seed(2)
    block = BranchConv2d(8, 16)
    x = torch.randn(4, 8, 10, 10)
    with torch.no_grad():
        assert (block(x) - block.branch_forward(x)).abs().max().item() <= 1e-5


@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("ratio", [1, 3])
def test_depthwise_branch_forward_equals_merged(bias: bool, ratio: int) -> None:
    torch.manual_seed(5)
    block = BranchDWConv2d(6, bias=bias, gpd_ratio=ratio)
    _randomize_(block)
    x = torch.randn(2, 6, 7, 9)
    with torch.no_grad():
        ref = block.branch_forward(x)
        tol = 1e-5 * ref.abs().max().item()
        assert (block(x) - ref).abs().max().item() <= tol
        assert (block.to_conv()(x) - ref).abs().max().item() <= tol


def test_depthwise_kernels_by_hand() -> None:
    block = BranchDWConv2d(2, bias=False)
    taps = torch.arange(9.0).reshape(1, 1, 3, 3)
    with torch.no_grad():
        block.w_avg.fill_(1.8)
        block.w_mid.copy_(torch.tensor([2.0, -1.0]).reshape(2, 1, 1, 1))
        block.w_mid3x3.copy_(taps.expand(2, 1, 3, 3))
        block.scale.zero_()
        block.scale[2].fill_(1.0)
        torch.testing.assert_close(block.merged_weight(), torch.full((2, 1, 3, 3), 0.2))
        block.scale.zero_()
        block.scale[3].fill_(1.0)
        torch.testing.assert_close(block.merged_weight(), torch.cat([2 * taps, -taps]))


@pytest.mark.parametrize("bias", [True, False])
def test_linear_branch_forward_equals_merged(bias: bool) -> None:
    torch.manual_seed(3)
    block = BranchLinear(12, 7, bias=bias, mid_features=5)
    x = torch.randn(6, 12)
    with torch.no_grad():
        ref = block.branch_forward(x)
        assert (block(x) - ref).abs().max().item() <= 1e-5
        assert (block.to_linear()(x) - ref).abs().max().item() <= 1e-5


def test_merged_kernels_by_hand() -> None:
    """Each branch alone (the others at scale 0), with values worked out by hand."""
    block = BranchConv2d(1, 1, bias=False, mid_channels=1)
    taps = torch.arange(9.0).reshape(1, 1, 3, 3)
    with torch.no_grad():
        block.w_avg.fill_(0.9)
        block.w_1x1.fill_(2.0)
        block.w_mid.fill_(2.0)
        block.w_mid3x3.copy_(taps)
        block.w_dw.copy_(taps)
        block.w_pw.fill_(3.0)
        expect = {
            2: torch.full((1, 1, 3, 3), 0.1),  # 1×1 then 3×3 avg pooling: W/9 in every tap
            1: torch.tensor([[[[0.0, 0, 0], [0, 2, 0], [0, 0, 0]]]]),  # 1×1: centre tap only
            3: 2.0 * taps,  # 1×1 (×2) then 3×3
            4: 3.0 * taps,  # depthwise 3×3 then pointwise (×3)
        }
        for b, kernel in expect.items():
            block.scale.zero_()
            block.scale[b].fill_(1.0)
            torch.testing.assert_close(block.merged_weight(), kernel)
            x = torch.randn(1, 1, 5, 5)
            torch.testing.assert_close(block(x), block.branch_forward(x), atol=1e-5, rtol=1e-6)
        # A 1-pixel border: avg pooling counts the zero padding (count_include_pad).
        block.scale.zero_()
        block.scale[2].fill_(1.0)
        y = block.branch_forward(torch.ones(1, 1, 3, 3))
        torch.testing.assert_close(y[0, 0, 0, 0], torch.tensor(0.9 * 4 / 9))


@pytest.mark.parametrize("arch", list(ARCHS))
@pytest.mark.parametrize("mode", ["train", "eval"])
def test_finetune_init_preserves_the_function(arch: str, mode: str) -> None:
    plain, shape = _plain(arch)
    _warm(plain, shape)
    branched = to_branches(plain, init="finetune")
    x = torch.randn(8, *shape)
    plain.train(mode == "train")
    branched.train(mode == "train")
    with torch.no_grad():
        assert (branched(x) - plain(x)).abs().max().item() <= 1e-5
    n_blocks = sum(
        isinstance(m, (BranchConv2d, BranchDWConv2d, BranchLinear)) for m in branched.modules()
    )
    assert n_blocks > 0


def test_which_layers_are_branched() -> None:
    plain, _ = _plain("resnet8")
    branched = to_branches(plain)
    assert isinstance(branched.conv1, BranchConv2d)  # 3×3 stride 1 (even the input layer)
    assert isinstance(branched.layer1[0].conv2, BranchConv2d)
    assert type(branched.layer2[0].conv1) is nn.Conv2d  # stride 2: stays plain
    assert type(branched.layer2[0].downsample[0]) is nn.Conv2d  # 1×1: stays plain
    assert isinstance(branched.fc, BranchLinear)  # every Linear, the head included
    assert type(to_branches(plain, linear=False).fc) is nn.Linear
    dw, _ = _plain("dwnet")
    dw_branched = to_branches(dw)
    assert isinstance(dw_branched[3], BranchDWConv2d)  # depthwise 3×3
    assert type(dw_branched[6]) is nn.Conv2d  # pointwise 1×1: stays plain
    with pytest.raises(ValueError, match="init"):
        to_branches(plain, init="zeros")  # type: ignore[arg-type]


@pytest.mark.parametrize("arch", list(ARCHS))
@pytest.mark.parametrize("init", ["finetune", "fresh"])
def test_merge_restores_the_plain_state_dict(arch: str, init: str) -> None:
    plain, _ = _plain(arch)
    merged = merge(to_branches(plain, init=init))  # type: ignore[arg-type]
    ref = plain.state_dict()
    got = merged.state_dict()
    assert list(got) == list(ref)
    assert all(got[k].shape == ref[k].shape for k in ref)
    if init == "finetune":
        for k in ref:
            torch.testing.assert_close(got[k], ref[k], atol=1e-6, rtol=0)


def test_fresh_init_keeps_the_models_weight_scale() -> None:
    """`fresh` matches the mean square of the replaced layer's own (zoo) init, split evenly."""
    torch.manual_seed(4)
    conv = nn.Conv2d(32, 32, 3, padding=1)
    nn.init.kaiming_normal_(conv.weight, mode="fan_out", nonlinearity="relu")
    block = BranchConv2d.from_conv(conv, init="fresh")
    target = conv.weight.pow(2).mean().item()
    with torch.no_grad():
        for s, k in zip(block.scale, block.kernels(), strict=True):
            share = (s[:, None, None, None] * k).pow(2).mean().item()
            assert share == pytest.approx(target / block.n_branches, rel=1e-4)
        merged = block.merged_weight().pow(2).mean().item()
    assert 0.5 * target < merged < 2 * target  # independent branches: roughly additive


@pytest.mark.parametrize("arch", list(ARCHS))
@pytest.mark.parametrize("ratio", [2, 3, 4])
@pytest.mark.parametrize("mode", ["train", "eval"])
def test_ir_of_a_branched_model_is_exact(arch: str, ratio: int, mode: str) -> None:
    student, shape = _branched(arch)
    dt = expand(student, ratio)
    x = torch.randn(8, *shape)
    student.train(mode == "train")
    dt.train(mode == "train")
    with torch.no_grad():
        assert (dt(x) - student(x)).abs().max().item() <= 1e-5
    # The DT's blocks merge into plain layers computing the same function.
    with torch.no_grad():
        assert (merge(dt)(x) - student(x)).abs().max().item() <= 1e-5
    with torch.no_grad():  # and the same function as the plain student's DT
        plain_dt = expand(merge(student), ratio).train(mode == "train")
        assert (merge(dt)(x) - plain_dt(x)).abs().max().item() <= 1e-5


def test_ir_noise_breaks_symmetry_slightly() -> None:
    student, shape = _branched("resnet8")
    student.eval()
    x = torch.randn(4, *shape)
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        small = (expand(student, 2, 1e-6, g).eval()(x) - student(x)).abs().max().item()
        large = (expand(student, 2, 1e-3, g).eval()(x) - student(x)).abs().max().item()
    assert 0 < small < large < 1.0


@pytest.mark.parametrize("arch", list(ARCHS))
@pytest.mark.parametrize("ratio", [2, 3, 4])
def test_merge_of_the_slice_is_the_merged_student(arch: str, ratio: int) -> None:
    student, _ = _branched(arch)
    plain, _ = _plain(arch)
    pair = SharedPair(student, ratio)
    got = merge(pair.extract()).state_dict()
    ref = merge(student).state_dict()
    assert list(got) == list(ref) == list(plain.state_dict())
    for k, v in ref.items():
        assert got[k].shape == v.shape == plain.state_dict()[k].shape
        torch.testing.assert_close(got[k].float(), v.float(), atol=1e-6, rtol=0)
    # The branched slice itself comes back too, tensor by tensor.
    for k, v in student.state_dict().items():
        torch.testing.assert_close(pair.extract().state_dict()[k], v, atol=1e-6, rtol=1e-6)


@pytest.mark.parametrize("arch", list(ARCHS))
@pytest.mark.parametrize("ratio", [2, 3])
def test_merged_slice_matches_student_forward_after_dt_changes(arch: str, ratio: int) -> None:
    student, shape = _branched(arch)
    pair = SharedPair(student, ratio).eval()
    with torch.no_grad():
        for p in pair.dt.parameters():
            p.add_(0.05 * torch.randn_like(p))
    x = torch.randn(8, *shape)
    with torch.no_grad():
        want = pair.student_forward(x)
        got = merge(pair.extract()).eval()(x)
    assert (got - want).abs().max().item() <= 1e-5


def test_student_loss_reaches_only_the_slice() -> None:
    student, shape = _branched("biasnet")
    pair = SharedPair(student, 2).train()
    pair.student_forward(torch.randn(4, *shape)).sum().backward()
    block = pair.dt[2]
    assert isinstance(block, BranchConv2d)
    grad = block.w_mid.grad
    assert grad is not None
    cm, ci = student[2].w_mid.shape[:2]
    assert grad[:cm, :ci].abs().sum() > 0
    outside = grad.clone()
    outside[:cm, :ci] = 0
    assert outside.abs().sum() == 0
    assert block.scale.grad is not None
    assert block.scale.grad[:, student[2].out_channels :].abs().sum() == 0


def test_finetune_zero_scales_still_learn() -> None:
    """The 0-scale branches are random, so their scales get gradients from the first step."""
    torch.manual_seed(6)
    block = BranchConv2d.from_conv(nn.Conv2d(4, 5, 3, padding=1))
    block(torch.randn(2, 4, 6, 6)).pow(2).sum().backward()
    assert block.scale.grad is not None
    assert (block.scale.grad.abs().sum(dim=1) > 0).all()
