"""Progress weighting over the stages a spec runs, and upload file names."""

from __future__ import annotations

import pytest

from kdcore.validation import parse_spec
from worker.inputs import public_message, safe_filename
from worker.progress import ProgressModel, stage_weights

BASE = {
    "name": "p",
    "teacher": {"arch": "mlp", "train": {"epochs": 10}},
    "student": {"arch": "mlp"},
    "data": {"source": "synthetic"},
    "train": {"epochs": 30},
}


def test_weights_follow_the_stages_that_run() -> None:
    w = stage_weights(parse_spec({**BASE, "evaluate": {"baseline": True}}))
    assert set(w) == {"teacher", "baseline", "distill", "evaluate", "export"}
    assert sum(w.values()) == pytest.approx(1.0)
    assert w["distill"] == pytest.approx(3 * w["teacher"]) and w["baseline"] == w["distill"]

    onnx_teacher = {**BASE, "teacher": {"onnx": "upload:abc"}}
    w = stage_weights(parse_spec(onnx_teacher))
    assert set(w) == {"distill", "evaluate", "export"}
    assert w["distill"] == pytest.approx(0.95)


def test_each_teacher_trained_in_the_job_is_a_stage() -> None:
    spec = {k: v for k, v in BASE.items() if k != "teacher"}
    spec["teachers"] = [
        {"arch": "mlp", "train": {"epochs": 10}},
        {"onnx": "upload:abc"},
        {"arch": "mlp", "train": {"epochs": 20}},
    ]
    w = stage_weights(parse_spec(spec))
    assert list(w) == ["teacher1", "teacher3", "distill", "evaluate", "export"]
    assert w["teacher3"] == pytest.approx(2 * w["teacher1"])
    model = ProgressModel(w)
    assert model.start("distill", 30, 1) == pytest.approx(w["teacher1"] + w["teacher3"])


def test_each_teacher_assistant_is_a_stage_before_distill() -> None:
    spec = {**BASE, "assistants": [{"arch": "mlp"}, {"arch": "mlp"}]}
    w = stage_weights(parse_spec({**spec, "evaluate": {"baseline": True}}))
    assert list(w) == [
        "teacher",
        "baseline",
        "assistant1",
        "assistant2",
        "distill",
        "evaluate",
        "export",
    ]
    assert w["assistant1"] == w["assistant2"] == w["distill"] == pytest.approx(3 * w["teacher"])
    assert sum(w.values()) == pytest.approx(1.0)


def test_each_born_again_generation_is_a_stage_after_distill() -> None:
    w = stage_weights(parse_spec({**BASE, "generations": 3}))
    assert list(w) == ["teacher", "distill", "generation2", "generation3", "evaluate", "export"]
    assert w["generation2"] == w["generation3"] == w["distill"]
    assert sum(w.values()) == pytest.approx(1.0)


def test_progress_is_monotonic_and_ends_at_one() -> None:
    spec = parse_spec(BASE)
    model = ProgressModel(stage_weights(spec))
    seen = [model.start("teacher", 10, 4)]
    for epoch in range(1, 11):
        seen += [model.at("teacher", epoch, step) for step in range(1, 5)]
    seen.append(model.end("teacher"))
    seen.append(model.start("distill", 30, 2))
    # A resumed stage starts part-way: progress jumps ahead, never back.
    seen += [model.at("distill", epoch, step) for epoch in range(11, 31) for step in (1, 2)]
    seen.append(model.end("distill"))
    for stage in ("evaluate", "export"):
        seen += [model.start(stage, 1, 1), model.at(stage, 1, 1), model.end(stage)]
    assert seen == sorted(seen)
    assert seen[0] == 0.0 and seen[-1] == pytest.approx(1.0)
    assert model.end("teacher") == pytest.approx(0.95 * 10 / 40)


@pytest.mark.parametrize(
    ("name", "safe"),
    [
        ("data.npz", "data.npz"),
        ("my data (v2).csv", "my_data__v2_.csv"),
        ("../../etc/passwd.npz", "passwd.npz"),
        ("C:\\\\Users\\\\x\\\\model.onnx", "model.onnx"),
        (".hidden.pt", "hidden.pt"),
        ("", "file"),
    ],
)
def test_safe_filename_keeps_the_suffix(name: str, safe: str) -> None:
    assert safe_filename(name) == safe


def test_public_message_hides_local_paths() -> None:
    names = {"/tmp/w/inputs/data.source/d.npz": "upload:abc (d.npz)"}
    msg = public_message("/tmp/w/inputs/data.source/d.npz is not readable", names)
    assert msg == "upload:abc (d.npz) is not readable"
