"""The model zoo: every architecture builds from the data's shape and exports cleanly."""

from __future__ import annotations

import io
import re
import warnings

import numpy as np
import onnxruntime as ort
import pytest
import torch
from torch import nn

from kdcore.models.registry import build_model, names

NUM_CLASSES = 3
IMAGE_SHAPES = [(1, 8, 8), (3, 32, 32)]
SEQUENCE_ONLY = {"conv1d"}
ANY_SHAPE = {"mlp"}


def _cases() -> list[tuple[str, tuple[int, ...]]]:
    cases = []
    for arch in names():
        if arch in SEQUENCE_ONLY:
            cases += [(arch, (64,)), (arch, (3, 20))]
        elif arch in ANY_SHAPE:
            cases += [(arch, s) for s in IMAGE_SHAPES] + [(arch, (64,))]
        else:
            cases += [(arch, s) for s in IMAGE_SHAPES]
    return cases


def _params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


def test_zoo_lists_the_expected_architectures() -> None:
    expected = {
        "mlp", "conv1d", "convnet", "vit_tiny", "wrn_16_2", "wrn_40_2", "resnet8x4", "resnet32x4",
        *(f"resnet{d}" for d in (8, 14, 20, 32, 56, 110)),
    }  # fmt: skip
    assert expected <= set(names())


@pytest.mark.parametrize(("arch", "shape"), _cases(), ids=lambda v: str(v))
def test_builds_and_gives_logits_for_any_batch(arch: str, shape: tuple[int, ...]) -> None:
    model = build_model(arch, shape, NUM_CLASSES).eval()
    with torch.no_grad():
        for batch in (1, 5):
            out = model(torch.randn(batch, *shape))
            assert isinstance(out, torch.Tensor)
            assert out.shape == (batch, NUM_CLASSES)
            assert torch.isfinite(out).all()


@pytest.mark.parametrize("arch", [a for a in names() if a not in SEQUENCE_ONLY])
def test_every_parameter_trains(arch: str) -> None:
    # A module that never receives a gradient is dead weight in a student.
    model = build_model(arch, (1, 8, 8), NUM_CLASSES).train()
    model(torch.randn(4, 1, 8, 8)).logsumexp(1).sum().backward()
    dead = [n for n, p in model.named_parameters() if p.grad is None]
    assert not dead


def test_conv1d_trains_and_reads_flat_and_channel_inputs() -> None:
    flat = build_model("conv1d", (40,), 2)
    flat(torch.randn(3, 40)).sum().backward()
    assert all(p.grad is not None for p in flat.parameters())
    assert build_model("conv1d", (2, 40), 2)(torch.randn(3, 2, 40)).shape == (3, 2)


@pytest.mark.parametrize("arch", ["convnet", "resnet8", "wrn_16_2", "vit_tiny"])
def test_two_dim_images_are_read_as_one_channel(arch: str) -> None:
    model = build_model(arch, (8, 8), 4).eval()
    assert model(torch.randn(2, 8, 8)).shape == (2, 4)


def test_param_counts_are_ordered_like_the_papers() -> None:
    image_archs = [a for a in names() if a not in SEQUENCE_ONLY]
    counts = {a: _params(build_model(a, (3, 32, 32), 10)) for a in image_archs}
    assert counts["resnet8"] < counts["resnet14"] < counts["resnet20"] < counts["resnet32"]
    assert counts["resnet32"] < counts["resnet56"] < counts["resnet110"]
    assert counts["resnet8x4"] > counts["resnet8"]
    assert counts["resnet32x4"] > counts["resnet8x4"]
    assert counts["wrn_40_2"] > counts["wrn_16_2"]
    # Published sizes (CIFAR-100 heads in RepDistiller differ only in the fc layer).
    assert 0.07e6 < counts["resnet8"] < 0.09e6
    assert 7.3e6 < counts["resnet32x4"] < 7.5e6
    assert 2.2e6 < counts["wrn_40_2"] < 2.3e6


def test_input_shape_and_num_classes_come_from_the_data() -> None:
    a = build_model("resnet8", (1, 8, 8), 10)
    b = build_model("resnet8", (3, 8, 8), 7)
    assert a.conv1.in_channels == 1 and b.conv1.in_channels == 3
    assert a.fc.out_features == 10 and b.fc.out_features == 7
    assert build_model("mlp", (3, 4, 5), 2).fc1.in_features == 60


def test_module_names_are_stable_hook_points() -> None:
    def module_names(arch: str, shape: tuple[int, ...] = (3, 32, 32)) -> set[str]:
        return {n for n, _ in build_model(arch, shape, 5).named_modules()}

    assert {"conv1", "layer1", "layer2", "layer3", "pool", "fc"} <= module_names("resnet8")
    assert {"conv1", "block1", "block2", "block3", "bn1", "pool", "fc"} <= module_names("wrn_16_2")
    assert {
        "patch_embed", "blocks.0.attn.q", "blocks.0.attn.k", "blocks.0.attn.v",
        "blocks.0.attn.proj", "blocks.3.mlp.fc1", "blocks.3.mlp.fc2", "norm", "pool", "head",
    } <= module_names("vit_tiny")  # fmt: skip
    assert {"block1", "down1", "block2", "pool", "fc"} <= module_names("convnet")
    assert {"block1", "block2", "pool", "fc"} <= module_names("conv1d", (64,))
    assert {"fc1", "act1", "head"} <= module_names("mlp", (64,))
    vit = build_model("vit_tiny", (3, 32, 32), 5)
    assert not any(isinstance(m, nn.MultiheadAttention) for m in vit.modules())


@pytest.mark.parametrize("arch", ["resnet8", "wrn_16_2", "vit_tiny", "convnet"])
def test_pool_outputs_the_embedding_fed_to_the_head(arch: str) -> None:
    # Feature-based methods hook `pool` for the (batch, feature_dim) penultimate features.
    model = build_model(arch, (1, 8, 8), 5).eval()
    seen: list[torch.Tensor] = []
    model.get_submodule("pool").register_forward_hook(lambda m, i, o: seen.append(o))
    logits = model(torch.randn(2, 1, 8, 8))
    assert seen[0].shape == (2, model.feature_dim)
    head = model.get_submodule("head" if arch == "vit_tiny" else "fc")
    torch.testing.assert_close(head(seen[0]), logits)


def test_kwargs_change_the_architecture() -> None:
    small = build_model("mlp", (64,), 3, hidden=[8])
    big = build_model("mlp", (64,), 3, hidden=[128, 64], dropout=0.1)
    assert _params(small) < _params(big)
    assert {n for n, _ in big.named_modules()} >= {"fc1", "fc2", "drop1", "drop2", "head"}
    deep = build_model("convnet", (1, 8, 8), 3, channels=[8, 8, 8, 8, 8])
    # 8x8 is halved only while at least 2x2 remains: 8 → 4 → 2, then no more pooling.
    assert sum(n.startswith("down") for n, _ in deep.named_children()) == 2
    assert deep(torch.randn(2, 1, 8, 8)).shape == (2, 3)
    vit = build_model("vit_tiny", (3, 32, 32), 3, dim=32, depth=2, heads=2, mlp_ratio=4)
    assert len(vit.blocks) == 2 and vit.blocks[0].mlp.fc1.out_features == 128


@pytest.mark.parametrize(
    ("shape", "patch"), [((1, 8, 8), 4), ((3, 32, 32), 4), ((1, 6, 6), 2), ((1, 5, 7), 1)]
)
def test_vit_default_patch_size_divides_the_image(shape: tuple[int, ...], patch: int) -> None:
    model = build_model("vit_tiny", shape, 3).eval()
    assert model.patch_size == patch
    assert model(torch.randn(2, *shape)).shape == (2, 3)


@pytest.mark.parametrize(
    ("arch", "shape", "kwargs", "needle"),
    [
        ("resnet8", (64,), {}, "(C, H, W)"),
        ("conv1d", (3, 8, 8), {}, "(L,)"),
        ("vit_tiny", (1, 8, 8), {"patch_size": 3}, "patch_size"),
        ("vit_tiny", (1, 8, 8), {"dim": 10, "heads": 4}, "divisible"),
        ("mlp", (64,), {"hidden": 32}, "hidden"),
        ("mlp", (64,), {"nonsense": 1}, "nonsense"),
        ("resnet8", (1, 8, 8), {"width_mult": 2}, "width_mult"),
        ("convnet", (1, 8, 8), {"kernel_size": 4}, "odd"),
    ],
)
def test_bad_shapes_and_kwargs_are_value_errors(
    arch: str, shape: tuple[int, ...], kwargs: dict, needle: str
) -> None:
    with pytest.raises(ValueError, match=re.escape(needle)):
        build_model(arch, shape, 3, **kwargs)


@pytest.mark.parametrize(("arch", "shape"), [("resnet8", (1, 8, 8)), ("vit_tiny", (3, 16, 16))])
def test_trace_and_export_keep_the_batch_dynamic(arch: str, shape: tuple[int, ...]) -> None:
    model = build_model(arch, shape, NUM_CLASSES).eval()
    example = torch.randn(2, *shape)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        traced = torch.jit.trace(model, example)
    buf = io.BytesIO()
    torch.jit.save(traced, buf)
    buf.seek(0)
    reloaded = torch.jit.load(buf)
    exported = torch.export.export(
        model, (example,), dynamic_shapes={"x": {0: torch.export.Dim("batch")}}
    )
    for batch in (1, 7):
        x = torch.randn(batch, *shape)
        want = model(x)
        torch.testing.assert_close(reloaded(x), want)
        torch.testing.assert_close(exported.module()(x), want)


@pytest.mark.parametrize(("arch", "shape"), [("resnet8", (1, 8, 8)), ("vit_tiny", (3, 16, 16))])
def test_onnx_export_runs_in_onnxruntime(arch: str, shape: tuple[int, ...]) -> None:
    model = build_model(arch, shape, NUM_CLASSES).eval()
    buf = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            model,
            (torch.randn(2, *shape),),
            buf,
            dynamo=False,
            input_names=["x"],
            output_names=["logits"],
            dynamic_axes={"x": {0: "batch"}, "logits": {0: "batch"}},
        )
    session = ort.InferenceSession(buf.getvalue(), providers=["CPUExecutionProvider"])
    for batch in (1, 5):
        x = torch.randn(batch, *shape)
        got = session.run(None, {"x": x.numpy()})[0]
        np.testing.assert_allclose(got, model(x).detach().numpy(), atol=1e-4, rtol=1e-4)
