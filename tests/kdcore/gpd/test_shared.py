"""The hard strategy (gpd.md §2): the student is the DT's leading slice, times its factors."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import ModuleType

import pytest
import torch
from torch import nn

from kdcore.schemes.gpd.shared import SharedPair


def _expand_tests() -> ModuleType:
    """test_expand.py's students (tests are not a package: load it by path)."""
    path = Path(__file__).with_name("test_expand.py")
    spec = importlib.util.spec_from_file_location("_gpd_test_expand", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


_EXP = _expand_tests()
ARCHS = [
    "mlp",
    "convnet",
    "resnet8",
    "wrn_16_2",
    "conv1d",
    "vit_tiny",
    "mobilenet_tiny",
    "grouped",
]


def _student(arch: str) -> tuple[nn.Module, tuple[int, ...]]:
    return _EXP._student(arch)


def _randomize_(m: nn.Module) -> None:
    with torch.no_grad():
        for p in m.parameters():
            p.add_(torch.randn_like(p) * 0.3)


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("ratio", [2, 3])
@pytest.mark.parametrize("mode", ["train", "eval"])
def test_student_forward_is_the_student(arch: str, ratio: int, mode: str) -> None:
    """Noise 0: cutting the student out of the fresh DT gives it back; checks every factor."""
    student, shape = _student(arch)
    pair = SharedPair(student, ratio).train(mode == "train")
    student.train(mode == "train")
    x = torch.randn(8, *shape)
    with torch.no_grad():
        diff = (pair.student_forward(x) - student(x)).abs().max().item()
    assert diff <= 1e-6


@pytest.mark.parametrize("arch", ARCHS)
def test_extract_equals_student_forward_after_any_change(arch: str) -> None:
    student, shape = _student(arch)
    pair = SharedPair(student, 2)
    _randomize_(pair.dt)
    pair.eval()
    x = torch.randn(8, *shape)
    extracted = pair.extract().eval()
    with torch.no_grad():
        assert torch.equal(extracted(x), pair.student_forward(x))
    want = {k: v.shape for k, v in student.state_dict().items()}
    assert {k: v.shape for k, v in extracted.state_dict().items()} == want
    assert type(extracted) is type(student)


@pytest.mark.parametrize("arch", ARCHS)
def test_student_loss_reaches_only_the_slice(arch: str) -> None:
    student, shape = _student(arch)
    pair = SharedPair(student, 2).train()
    _randomize_(pair.dt)
    pair.student_forward(torch.randn(8, *shape)).logsumexp(1).sum().backward()
    shapes = {k: p.shape for k, p in student.named_parameters()}
    inside = 0
    for name, p in pair.dt.named_parameters():
        assert p.grad is not None, name
        block = tuple(slice(0, n) for n in shapes[name])
        outside = p.grad.clone()
        outside[block] = 0
        assert torch.count_nonzero(outside) == 0, name
        inside += int(torch.count_nonzero(p.grad[block]) > 0)
    assert inside >= len(shapes) // 2


@pytest.mark.parametrize("arch", [a for a in ARCHS if a not in ("mlp", "vit_tiny")])
def test_train_mode_updates_the_students_own_statistics(arch: str) -> None:
    student, shape = _student(arch)
    pair = SharedPair(student, 2).train()
    dt_before = {k: b.clone() for k, b in pair.dt.named_buffers()}
    own_before = {k: b.clone() for k, b in pair.student_stats.named_buffers()}
    with torch.no_grad():
        pair.student_forward(torch.randn(8, *shape) + 1.0)
    for k, b in pair.dt.named_buffers():
        assert torch.equal(b, dt_before[k]), k
    changed = [
        k for k, b in pair.student_stats.named_buffers() if not torch.equal(b, own_before[k])
    ]
    assert changed and len(changed) == len(own_before)
