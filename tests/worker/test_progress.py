"""Progress weighting over the stages a spec runs, and upload file names."""

from __future__ import annotations

from typing import Any

import pytest
from sqlalchemy import Engine

from kdcore.callbacks import EpochRecord
from kdcore.validation import parse_spec
from store import jobs as store_jobs
from store.db import session_scope
from store.models import Metric
from store.settings import Settings
from worker.inputs import public_message, safe_filename
from worker.lease import Lease
from worker.progress import JobCallbacks, ProgressModel, stage_weights

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


def test_a_resumed_stage_keeps_the_metrics_of_every_checkpointed_epoch(
    jobs: Any, engine: Engine, settings: Settings
) -> None:
    """A worker killed between epoch 2's checkpoint and its metrics: the next attempt resumes
    after epoch 2 and records both epochs from the checkpoint (epoch 1's value, already there,
    is rewritten unchanged)."""
    job_id = jobs.make()
    with session_scope(engine) as s:
        claim = store_jobs.claim(s, job_id, "w1", lease_s=60)
    assert claim is not None
    callbacks = JobCallbacks(
        engine, claim, parse_spec(jobs.get(job_id).spec), Lease(engine, claim, settings)
    )
    history = [
        EpochRecord("distill", epoch, 1.0 / epoch, 50.0 + epoch, 0.01, 1.0, 0.9) for epoch in (1, 2)
    ]
    callbacks.on_epoch_end(history[0])
    callbacks.on_resume("distill", history)
    rows = jobs.rows(Metric, job_id)
    got = {(m.epoch, m.name): m.value for m in rows}
    assert len(rows) == 6
    assert got[(2, "student_accuracy")] == 52.0 and got[(1, "train_loss")] == 1.0
