"""Teacher loading: every file format gives the eager model's outputs, and bad files fail early."""

from __future__ import annotations

import copy
import os
import warnings
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file
from torch import nn

from kdcore.models.loaders import (
    ModelLoadError,
    OnnxModel,
    check_output_shape,
    count_params,
    load_state_dict_file,
    load_teacher,
    load_weights,
)
from kdcore.models.registry import build_model
from kdcore.spec import TeacherSpec

SHAPE = (1, 8, 8)
CLASSES = 4
ARCH = "resnet8"

# Set if unpickling ever runs code from a file; it must stay False.
UNPICKLED: list[bool] = []


def _mark_unpickled() -> dict:
    UNPICKLED.append(True)
    return {}


class Payload:
    """An arbitrary object whose unpickling would run `_mark_unpickled`."""

    def __reduce__(self) -> tuple:
        return (_mark_unpickled, ())


@pytest.fixture(scope="module")
def teacher() -> nn.Module:
    torch.manual_seed(0)
    model = build_model(ARCH, SHAPE, CLASSES)
    with torch.no_grad():  # non-trivial BatchNorm statistics, so a bad load would show
        for _ in range(3):
            model(torch.randn(16, *SHAPE) * 2 + 0.5)
    return model.eval()


@pytest.fixture
def x() -> torch.Tensor:
    return torch.randn(5, *SHAPE)


def _onnx(model: nn.Module, path: Path, shape: tuple[int, ...] = SHAPE, dynamic: bool = True):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            model,
            (torch.randn(2 if dynamic else 1, *shape),),
            str(path),
            dynamo=False,
            input_names=["x"],
            output_names=["logits"],
            dynamic_axes={"x": {0: "batch"}, "logits": {0: "batch"}} if dynamic else None,
        )
    return path


def _torchscript(model: nn.Module, path: Path) -> Path:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.jit.save(torch.jit.trace(model, torch.randn(2, *SHAPE)), str(path))
    return path


def _assert_frozen_teacher(model: nn.Module) -> None:
    assert not model.training
    assert all(not p.requires_grad for p in model.parameters())


@pytest.mark.parametrize("layout", ["plain", "nested_model", "nested_state_dict", "ddp_prefix"])
def test_checkpoint_pt_loads_and_matches(
    teacher: nn.Module, x: torch.Tensor, tmp_path: Path, layout: str
) -> None:
    sd = teacher.state_dict()
    obj = {
        "plain": sd,
        "nested_model": {"model": sd, "epoch": 240, "accuracy": 71.2},
        "nested_state_dict": {"state_dict": sd, "optimizer": {"lr": 0.1}},
        "ddp_prefix": {f"module.{k}": v for k, v in sd.items()},
    }[layout]
    path = tmp_path / "teacher.pth"
    torch.save(obj, path)
    loaded = load_teacher(TeacherSpec(arch=ARCH, checkpoint=str(path)), SHAPE, CLASSES)
    _assert_frozen_teacher(loaded)
    torch.testing.assert_close(loaded(x), teacher(x))


@pytest.mark.parametrize("name", ["teacher.safetensors", "teacher.bin"])
def test_checkpoint_safetensors_loads_and_matches(
    teacher: nn.Module, x: torch.Tensor, tmp_path: Path, name: str
) -> None:
    # A safetensors file is recognised by its header even without the suffix.
    path = tmp_path / name
    save_file({k: v.contiguous() for k, v in teacher.state_dict().items()}, str(path))
    loaded = load_teacher(TeacherSpec(arch=ARCH, checkpoint=str(path)), SHAPE, CLASSES)
    _assert_frozen_teacher(loaded)
    torch.testing.assert_close(loaded(x), teacher(x))


def test_torchscript_loads_and_matches(teacher: nn.Module, x: torch.Tensor, tmp_path: Path) -> None:
    path = _torchscript(teacher, tmp_path / "teacher.ts")
    loaded = load_teacher(TeacherSpec(torchscript=str(path)), SHAPE, CLASSES)
    _assert_frozen_teacher(loaded)
    torch.testing.assert_close(loaded(x), teacher(x))
    assert count_params(loaded) == count_params(teacher)


def test_onnx_loads_and_matches(teacher: nn.Module, x: torch.Tensor, tmp_path: Path) -> None:
    path = _onnx(teacher, tmp_path / "teacher.onnx")
    loaded = load_teacher(TeacherSpec(onnx=str(path)), SHAPE, CLASSES)
    assert isinstance(loaded, OnnxModel)
    _assert_frozen_teacher(loaded)
    assert list(loaded.parameters()) == []
    out = loaded(x.requires_grad_())
    assert out.dtype == torch.float32 and not out.requires_grad
    torch.testing.assert_close(out, teacher(x).detach(), atol=1e-4, rtol=1e-4)
    # BatchNorm is folded into the convolutions on export, so ONNX counts fewer weights.
    assert 0.9 * count_params(teacher) < count_params(loaded) <= count_params(teacher)
    clone = copy.deepcopy(loaded)  # schemes may copy a teacher; the session is rebuilt
    torch.testing.assert_close(clone(x), out)


def test_onnx_param_count_is_exact_without_batchnorm(tmp_path: Path) -> None:
    mlp = build_model("mlp", SHAPE, CLASSES, hidden=[16, 8]).eval()
    onnx_model = OnnxModel(_onnx(mlp, tmp_path / "mlp.onnx"))
    assert count_params(onnx_model) == count_params(mlp) == 64 * 16 + 16 + 16 * 8 + 8 + 8 * 4 + 4


def test_onnx_with_fixed_batch_runs_any_batch(
    teacher: nn.Module, x: torch.Tensor, tmp_path: Path
) -> None:
    path = _onnx(teacher, tmp_path / "batch1.onnx", dynamic=False)
    loaded = load_teacher(TeacherSpec(onnx=str(path)), SHAPE, CLASSES)
    assert loaded.fixed_batch == 1
    torch.testing.assert_close(loaded(x), teacher(x), atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("source", ["onnx", "torchscript", "checkpoint"])
def test_wrong_number_of_classes_names_field_and_counts(
    teacher: nn.Module, tmp_path: Path, source: str
) -> None:
    if source == "onnx":
        spec = TeacherSpec(onnx=str(_onnx(teacher, tmp_path / "t.onnx")))
    elif source == "torchscript":
        spec = TeacherSpec(torchscript=str(_torchscript(teacher, tmp_path / "t.pt")))
    else:
        torch.save(teacher.state_dict(), tmp_path / "t.pt")
        spec = TeacherSpec(arch=ARCH, checkpoint=str(tmp_path / "t.pt"))
    with pytest.raises(ModelLoadError) as info:
        load_teacher(spec, SHAPE, 10)
    err = info.value
    assert err.field == f"teacher.{source}"
    assert str(err).startswith(f"teacher.{source}: ")
    if source == "checkpoint":
        assert "fc.weight (4, 64) in file vs (10, 64) in model" in str(err)
    else:
        assert "(2, 4)" in str(err) and "10 classes" in str(err) and "10-way head" in str(err)


def test_field_prefix_is_configurable(teacher: nn.Module, tmp_path: Path) -> None:
    spec = TeacherSpec(onnx=str(_onnx(teacher, tmp_path / "t.onnx")))
    with pytest.raises(ModelLoadError) as info:
        load_teacher(spec, SHAPE, 7, field="teachers.1")
    assert info.value.field == "teachers.1.onnx"


def test_checkpoint_for_another_arch_lists_a_few_keys(teacher: nn.Module, tmp_path: Path) -> None:
    path = tmp_path / "t.pt"
    torch.save(teacher.state_dict(), path)
    with pytest.raises(ModelLoadError) as info:
        load_teacher(TeacherSpec(arch="resnet20", checkpoint=str(path)), SHAPE, CLASSES)
    msg = str(info.value)
    assert info.value.field == "teacher.checkpoint"
    assert "missing keys: layer1.1.conv1.weight" in msg and "more)" in msg
    assert "arch and kwargs" in msg
    assert len(msg) < 600


@pytest.mark.parametrize("content", ["random", "text", "empty"])
@pytest.mark.parametrize(
    ("source", "suffix"), [("onnx", ".onnx"), ("torchscript", ".pt"), ("checkpoint", ".pt")]
)
def test_a_file_that_is_not_a_model_is_refused(
    tmp_path: Path, content: str, source: str, suffix: str
) -> None:
    path = tmp_path / f"garbage{suffix}"
    data = {"random": os.urandom(4096), "text": b"epoch,acc\n1,0.5\n", "empty": b""}[content]
    path.write_bytes(data)
    spec = TeacherSpec(**{source: str(path)}, **({"arch": ARCH} if source == "checkpoint" else {}))
    with pytest.raises(ModelLoadError) as info:
        load_teacher(spec, SHAPE, CLASSES)
    assert info.value.field == f"teacher.{source}"
    assert "garbage" in str(info.value)


def test_missing_file_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ModelLoadError, match=r"teacher\.onnx: .*does not exist"):
        load_teacher(TeacherSpec(onnx=str(tmp_path / "nope.onnx")), SHAPE, CLASSES)


def test_arbitrary_pickled_objects_are_never_unpickled(tmp_path: Path) -> None:
    path = tmp_path / "evil.pt"
    torch.save({"weights": torch.zeros(2), "extra": Payload()}, path)
    with pytest.raises(ModelLoadError, match="never unpickled") as info:
        load_state_dict_file(path, field="teacher.checkpoint")
    assert info.value.field == "teacher.checkpoint"
    assert UNPICKLED == []


def test_a_whole_pickled_module_is_refused(teacher: nn.Module, tmp_path: Path) -> None:
    path = tmp_path / "module.pt"
    torch.save(teacher, path)  # the common mistake: saving the model, not its state dict
    with pytest.raises(ModelLoadError, match="state_dict"):
        load_state_dict_file(path)


class CallsOsSystem:
    """Unpickling this runs a shell command: the classic malicious checkpoint. torch's
    weights-only unpickler blocks its module by name, with its own wording ("Trying to load
    unsupported GLOBAL posix.system whose module posix is blocked")."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self) -> tuple:
        return (os.system, (f"touch {self.marker}",))


def _says_pickled_objects(message: str) -> None:
    assert "pickled Python object" in message, message
    assert "torch.save(model.state_dict(), path)" in message, message
    assert "safetensors" in message, message
    assert "not a state dict saved" not in message, message


def test_a_blocked_global_is_reported_as_pickled_objects(tmp_path: Path) -> None:
    marker = tmp_path / "ran"
    path = tmp_path / "evil.pt"
    torch.save({"weights": torch.zeros(2), "hook": CallsOsSystem(marker)}, path)
    with pytest.raises(ModelLoadError) as info:
        load_state_dict_file(path, field="teacher.checkpoint")
    _says_pickled_objects(info.value.message)
    assert f"{os.system.__module__}.system" in info.value.message  # what it would have called
    assert not marker.exists()


def test_a_checkpoint_with_training_objects_says_to_keep_the_tensors(tmp_path: Path) -> None:
    """The common case: a training script saved its arguments next to the weights."""
    import argparse

    path = tmp_path / "ckpt.pt"
    torch.save({"model": {"w": torch.zeros(2)}, "args": argparse.Namespace(lr=0.1)}, path)
    with pytest.raises(ModelLoadError) as info:
        load_state_dict_file(path)
    _says_pickled_objects(info.value.message)
    assert "argparse.Namespace" in info.value.message


def test_a_plain_pickle_is_reported_as_pickled_objects(tmp_path: Path) -> None:
    """pickle.dump (not torch.save) of an object: weights-only loading stops at an opcode."""
    import pickle

    path = tmp_path / "model.pkl"
    path.write_bytes(pickle.dumps(Payload(), protocol=pickle.HIGHEST_PROTOCOL))
    with pytest.raises(ModelLoadError) as info:
        load_state_dict_file(path)
    _says_pickled_objects(info.value.message)
    assert UNPICKLED == []


def test_any_weights_only_refusal_is_explained_whatever_its_wording(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """torch words its refusals differently from release to release; the message must not
    depend on matching one of them."""
    import pickle

    path = tmp_path / "ckpt.pt"
    torch.save({"w": torch.zeros(2)}, path)

    def refuse(*args: object, **kwargs: object) -> None:
        raise pickle.UnpicklingError("Weights only load failed. A wording from torch 9: nope")

    monkeypatch.setattr(torch, "load", refuse)
    with pytest.raises(ModelLoadError) as info:
        load_state_dict_file(path, field="student.checkpoint")
    assert info.value.field == "student.checkpoint"
    _says_pickled_objects(info.value.message)


def test_not_a_state_dict_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "list.pt"
    torch.save([torch.zeros(3)], path)
    with pytest.raises(ModelLoadError, match="not a state dict"):
        load_state_dict_file(path)


def test_torchscript_given_as_checkpoint_says_so(teacher: nn.Module, tmp_path: Path) -> None:
    path = _torchscript(teacher, tmp_path / "teacher.pt")
    with pytest.raises(ModelLoadError, match=r"teacher\.torchscript"):
        load_teacher(TeacherSpec(arch=ARCH, checkpoint=str(path)), SHAPE, CLASSES)


def test_state_dict_given_as_torchscript_says_so(teacher: nn.Module, tmp_path: Path) -> None:
    path = tmp_path / "sd.pt"
    torch.save(teacher.state_dict(), path)
    with pytest.raises(ModelLoadError, match=r"teacher\.checkpoint with teacher\.arch"):
        load_teacher(TeacherSpec(torchscript=str(path)), SHAPE, CLASSES)


def test_onnx_for_other_input_shape_is_refused(tmp_path: Path) -> None:
    other = build_model("convnet", (3, 16, 16), CLASSES).eval()
    path = _onnx(other, tmp_path / "rgb.onnx", shape=(3, 16, 16))
    with pytest.raises(ModelLoadError, match=r"\(\?, 3, 16, 16\).*\(1, 8, 8\)"):
        load_teacher(TeacherSpec(onnx=str(path)), SHAPE, CLASSES)


def test_model_returning_a_tuple_is_refused() -> None:
    class Features(nn.Module):
        def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            return x.flatten(1), x.flatten(1)[:, :CLASSES]

    with pytest.raises(ModelLoadError, match="tuple, not a tensor"):
        check_output_shape(Features(), SHAPE, CLASSES, "teacher.torchscript")
    with pytest.raises(ModelLoadError, match="2-D"):
        check_output_shape(nn.Identity(), SHAPE, CLASSES, "teacher.torchscript")
    with pytest.raises(ModelLoadError, match="failed"):
        check_output_shape(nn.Linear(3, CLASSES), SHAPE, CLASSES, "teacher.torchscript")


def test_bad_arch_or_kwargs_name_their_field(teacher: nn.Module, tmp_path: Path) -> None:
    path = tmp_path / "t.pt"
    torch.save(teacher.state_dict(), path)
    with pytest.raises(ModelLoadError) as info:
        load_teacher(TeacherSpec(arch="resnet9", checkpoint=str(path)), SHAPE, CLASSES)
    assert info.value.field == "teacher.arch"
    spec = TeacherSpec(arch=ARCH, kwargs={"depth": 3}, checkpoint=str(path))
    with pytest.raises(ModelLoadError) as info:
        load_teacher(spec, SHAPE, CLASSES)
    assert info.value.field == "teacher.kwargs"


def test_train_source_is_not_a_file() -> None:
    with pytest.raises(ValueError, match="trainer"):
        load_teacher(TeacherSpec(arch=ARCH, train={"epochs": 1}), SHAPE, CLASSES)


def test_load_weights_into_a_student(teacher: nn.Module, x: torch.Tensor, tmp_path: Path) -> None:
    path = tmp_path / "student.safetensors"
    save_file(dict(teacher.state_dict()), str(path))
    student = build_model(ARCH, SHAPE, CLASSES)
    sd = load_state_dict_file(path, field="student.checkpoint")
    load_weights(student, sd, "student.checkpoint")
    torch.testing.assert_close(student.eval()(x), teacher(x))
    assert all(p.requires_grad for p in student.parameters())  # a student stays trainable
