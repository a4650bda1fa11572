"""Every method through the whole job (`kdcore.pipeline.run` and `distill run`) on digits: a conv
teacher trained one epoch in the job, a small student, the exported student loaded back."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, ClassVar

import pytest
import torch
import yaml
from typer.testing import CliRunner

from client.cli import app
from kdcore.callbacks import Callbacks
from kdcore.data import load_data
from kdcore.evaluate import accuracy
from kdcore.export import load_safetensors_student
from kdcore.methods import registry
from kdcore.pipeline import run
from kdcore.validation import load_spec, parse_spec

CONV_TEACHER = {
    "arch": "convnet",
    "kwargs": {"channels": [16, 32]},
    "train": {"epochs": 1, "batch_size": 64},
}
CONV_STUDENT = {"arch": "convnet", "kwargs": {"channels": [4, 8]}}
BLOCKS = {"student_layers": ["block1", "block2"], "teacher_layers": ["block1", "block2"]}
METHODS: dict[str, dict[str, Any]] = {
    "kd": {},
    "dkd": {"warmup": 1},
    "fitnets": BLOCKS,
    "at": BLOCKS,
    "sp": {"student_layers": ["block2"], "teacher_layers": ["block2"]},
    "rkd": {},  # the `pool` embeddings by default
    "cc": {},
    "tf_kd": {},  # learns from a virtual teacher; the spec's teacher only sets the report's gap
    "dml": {"peers": 2},  # two peers of the student trained together; the best is exported
    "adversarial": {"hidden": 16},
    # A 2× wider dynamic teacher grown from the student, trained alongside it (scenario teacher).
    "gpd": {"ratio": 2},
    # FSP needs equal widths: resnet14 → resnet8 (both 16/16/32/64), flow from layer1 to layer2.
    "fsp": {"student_pairs": [["layer1", "layer2"]], "teacher_pairs": [["layer1", "layer2"]]},
    # Auxiliary heads on resnet8's layer1 and layer2, taught by its own output (no teacher used).
    "byot": {"stages": ["layer1", "layer2"], "final_stage": "layer3"},
    "combined": {
        "terms": [
            {"name": "kd", "temperature": 4.0},
            {"name": "at", "student_layers": ["block2"], "teacher_layers": ["block2"]},
        ]
    },
}


def job(name: str, method: dict[str, Any], **over: Any) -> dict[str, Any]:
    resnets = name in ("fsp", "byot")
    spec = {
        "name": f"e2e-{name}",
        "teacher": {**CONV_TEACHER, "arch": "resnet14", "kwargs": {}} if resnets else CONV_TEACHER,
        "student": {"arch": "resnet8"} if resnets else CONV_STUDENT,
        "data": {"source": "digits"},
        "method": {"name": name, **method},
        "train": {"epochs": 1, "batch_size": 64, "optimizer": {"name": "adam", "lr": 0.003}},
        "evaluate": {"latency_runs": 1, "latency_batch_size": 4},
        "export": ["safetensors"],
    }
    spec.update(over)
    return spec


def test_every_registered_method_is_exercised() -> None:
    assert set(METHODS) == set(registry.names()) - {"ce"}


@pytest.mark.parametrize("name", sorted(METHODS))
def test_method_runs_end_to_end_and_exports(name: str, tmp_path: Path) -> None:
    """Through `distill run`, as a user runs it: exit 0, report.json, a student that loads."""
    spec = parse_spec(job(name, METHODS[name]))
    path = tmp_path / "spec.yaml"
    path.write_text(yaml.safe_dump(job(name, METHODS[name])))
    result = CliRunner().invoke(app, ["run", str(path), "--out", str(tmp_path), "-q"])
    assert result.exit_code == 0, result.output
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["method"]["name"] == name
    assert [h["epoch"] for h in report["history"]] == [1]
    assert math.isfinite(report["history"][0]["train_loss"])
    method = registry.build(name, spec.method.model_extra)
    # Cached teacher logits only when no teacher feature is needed (and a teacher is consulted).
    assert report["teacher_cache"] is (method.needs_teacher and not method.teacher_layers())
    # The exported student loads back and scores what the report says.
    student = load_safetensors_student(tmp_path / "student.safetensors", tmp_path / "student.json")
    data = load_data(spec.data)
    reloaded = accuracy(student, data.x_val, data.y_val, device=torch.device("cpu"))
    assert reloaded == pytest.approx(report["student"]["accuracy"], abs=1e-3)


def test_wrong_layer_name_through_distill_run_lists_the_modules(tmp_path: Path) -> None:
    spec = job("at", {"student_layers": ["block9"], "teacher_layers": ["block2"]})
    path = tmp_path / "spec.yaml"
    path.write_text(yaml.safe_dump(spec))
    result = CliRunner().invoke(app, ["run", str(path), "--out", str(tmp_path / "o"), "-q"])
    assert result.exit_code == 2, result.output
    text = " ".join(result.output.split())  # the console wraps long lines
    assert "method.student_layers" in text and "'block9'" in text
    # Real module names of the student with their output shapes (batch of 2 in the dry run).
    assert "block1 (2, 4, 8, 8)" in text and "pool (2, 8)" in text
    # Found before any training: no stage checkpoint was written, the teacher's included.
    assert not list((tmp_path / "o" / "checkpoints").glob("*.ckpt.pt"))


def test_wrong_teacher_layer_fails_before_teacher_training(tmp_path: Path) -> None:
    from kdcore.errors import InputError

    class Trained(Callbacks):
        stages: ClassVar[list[str]] = []

        def on_step(self, stage: str, epoch: int, step: int, loss: float) -> None:
            self.stages.append(stage)

    spec = parse_spec(job("at", {"student_layers": ["block2"], "teacher_layers": ["nope"]}))
    with pytest.raises(InputError, match=r"method\.teacher_layers") as info:
        run(spec, tmp_path, callbacks=Trained())
    assert "'nope'" in str(info.value) and Trained.stages == []


EXAMPLES = Path(__file__).resolve().parents[3] / "examples"


@pytest.mark.parametrize(
    "example",
    [
        "digits-conv-combined.yaml",
        "digits-conv-at.yaml",
        "digits-resnet-fsp.yaml",
        "digits-tf-kd.yaml",
        "digits-teacher-assistant.yaml",
        "digits-born-again.yaml",
    ],
)
def test_method_examples_are_valid_specs(example: str) -> None:
    spec = load_spec(EXAMPLES / example)
    registry.build(spec.method.name, spec.method.model_extra)
