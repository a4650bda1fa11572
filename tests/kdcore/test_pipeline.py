"""The whole job through `kdcore.pipeline.run`: teacher sources, early errors, stale checkpoints."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import pytest
import torch
from torch import nn

from kdcore.callbacks import Callbacks
from kdcore.checkpoint import FolderCheckpoints
from kdcore.data import load_data
from kdcore.errors import InputError
from kdcore.models.registry import build_model
from kdcore.pipeline import run
from kdcore.spec import DataSpec
from kdcore.validation import parse_spec

DATA = {
    "source": "synthetic",
    "synthetic": {"input_shape": [1, 8, 8], "num_classes": 4, "n_train": 128, "n_val": 64},
}


def spec(teacher: dict, **over) -> dict:
    d = {
        "name": "p",
        "teacher": teacher,
        "student": {"arch": "mlp", "kwargs": {"hidden": [8]}},
        "data": DATA,
        "train": {"epochs": 1, "batch_size": 32},
        "evaluate": {"latency_runs": 1},
        "export": ["safetensors"],
    }
    d.update(over)
    return d


class Stages(Callbacks):
    def __init__(self) -> None:
        self.started: list[str] = []
        self.trained: set[str] = set()

    def on_stage_start(self, stage: str, epochs: int, steps_per_epoch: int) -> None:
        self.started.append(stage)

    def on_step(self, stage: str, epoch: int, step: int, loss: float) -> None:
        self.trained.add(stage)


@pytest.fixture(scope="module")
def trained_teacher() -> nn.Module:
    """Trained on the data as it comes, before `data.normalize` (what a teacher file gets)."""
    torch.manual_seed(0)
    model = build_model("convnet", (1, 8, 8), 4, channels=[4, 8])
    data = load_data(DataSpec.model_validate({**DATA, "normalize": False}))
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(40):
        opt.zero_grad()
        nn.functional.cross_entropy(model(data.x_train), data.y_train).backward()
        opt.step()
    return model.eval()


def test_teacher_from_checkpoint(tmp_path: Path, trained_teacher: nn.Module) -> None:
    path = tmp_path / "t.pt"
    torch.save(trained_teacher.state_dict(), path)
    t = {"arch": "convnet", "kwargs": {"channels": [4, 8]}, "checkpoint": str(path)}
    report = run(parse_spec(spec(t)), tmp_path / "out").to_json()
    data = load_data(DataSpec.model_validate({**DATA, "normalize": False}))
    expected = (trained_teacher(data.x_val).argmax(1) == data.y_val).float().mean() * 100
    assert expected > 50  # far from chance (25 %)
    assert report["teacher"]["accuracy"] == pytest.approx(expected.item(), abs=1e-3)
    assert report["teacher"]["source"] == "checkpoint"


def test_teacher_from_torchscript_and_onnx(tmp_path: Path, trained_teacher: nn.Module) -> None:
    x = torch.randn(2, 1, 8, 8)
    ts = tmp_path / "t.ts.pt"
    onnx = tmp_path / "t.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.jit.trace(trained_teacher, x).save(str(ts))
        torch.onnx.export(
            trained_teacher,
            (x,),
            str(onnx),
            dynamo=False,
            input_names=["input"],
            dynamic_axes={"input": {0: "b"}},
        )
    a = run(parse_spec(spec({"torchscript": str(ts)})), tmp_path / "a").to_json()
    b = run(parse_spec(spec({"onnx": str(onnx)})), tmp_path / "b").to_json()
    assert a["teacher"]["accuracy"] == pytest.approx(b["teacher"]["accuracy"], abs=1e-6)
    assert a["teacher"]["params"] == sum(p.numel() for p in trained_teacher.parameters())
    assert b["teacher"]["params"] > 0 and b["teacher_cache"] is True


def test_wrong_teacher_fails_before_any_training(tmp_path: Path) -> None:
    torch.manual_seed(0)
    seven_way = build_model("mlp", (1, 8, 8), 7, hidden=[4]).eval()
    path = tmp_path / "t.onnx"
    torch.onnx.export(
        seven_way,
        (torch.randn(2, 1, 8, 8),),
        str(path),
        dynamo=False,
        dynamic_axes={"x": {0: "b"}},
        input_names=["x"],
    )
    stages = Stages()
    with pytest.raises(InputError) as info:
        run(parse_spec(spec({"onnx": str(path)})), tmp_path / "out", callbacks=stages)
    assert info.value.field.startswith("teacher")
    assert "7" in info.value.message and "4 classes" in info.value.message
    assert stages.started == []
    (tmp_path / "junk.onnx").write_bytes(b"not a model")
    with pytest.raises(InputError, match="teacher"):
        run(parse_spec(spec({"onnx": str(tmp_path / "junk.onnx")})), tmp_path / "o2")


def test_teacher_trained_in_job_sees_every_label(tmp_path: Path) -> None:
    t = {"arch": "mlp", "kwargs": {"hidden": [16]}, "train": {"epochs": 1}}
    d = dict(DATA, labeled_fraction=0.25)
    report = run(parse_spec(spec(t, data=d)), tmp_path / "out").to_json()
    assert report["data"]["n_labeled"] == 32  # what the student sees
    assert len(report["teacher"]["history"]) == 1


def test_checkpoints_of_another_spec_are_not_resumed(tmp_path: Path) -> None:
    t = {"arch": "mlp", "kwargs": {"hidden": [16]}, "train": {"epochs": 2}}
    ckpt = FolderCheckpoints(tmp_path / "ckpt")
    first = run(parse_spec(spec(t)), tmp_path / "a", checkpoints=ckpt).to_json()
    # Same teacher and data, another student: the teacher stage is reused, the student is not.
    other = spec(t, student={"arch": "mlp", "kwargs": {"hidden": [12]}})
    stages = Stages()
    second = run(parse_spec(other), tmp_path / "b", checkpoints=ckpt, callbacks=stages).to_json()
    assert "teacher" not in stages.trained and "distill" in stages.trained
    assert second["teacher"]["accuracy"] == first["teacher"]["accuracy"]
    assert second["student"]["params"] != first["student"]["params"]
    again = run(parse_spec(other), tmp_path / "c", checkpoints=ckpt).to_json()
    assert again["student"]["accuracy"] == second["student"]["accuracy"]
    saved = json.loads((tmp_path / "c" / "report.json").read_text())
    assert saved["student"] == again["student"]
