"""Teacher assistants: the chain teacher → assistants → student through `kdcore.pipeline.run`,
its resume, its spec errors, and no assistants being exactly plain KD."""

from __future__ import annotations

from pathlib import Path

import pytest
from safetensors.torch import load_file

from kdcore.checkpoint import FolderCheckpoints
from kdcore.errors import InputError
from kdcore.pipeline import run
from kdcore.spec import SpecError
from kdcore.validation import parse_spec

from ._helpers import Stages, assert_student_loads_back, job

ASSISTANT = {"arch": "convnet", "kwargs": {"channels": [4, 8]}}


def test_chain_runs_end_to_end_resumes_and_exports(tmp_path: Path) -> None:
    second_assistant = {"arch": "mlp", "kwargs": {"hidden": [32]}}
    spec = parse_spec(job("ta", assistants=[ASSISTANT, second_assistant]))
    store = FolderCheckpoints(tmp_path / "ckpt")
    stages = Stages()
    report = run(spec, tmp_path / "out", callbacks=stages, checkpoints=store).to_json()
    chain = ["teacher", "assistant1", "assistant2", "distill"]
    assert stages.trained == [*chain, "evaluate", "export"]
    assert [a["arch"] for a in report["assistants"]] == ["convnet", "mlp"]
    for a in report["assistants"]:
        assert 0 < a["accuracy"] <= 100 and a["params"] > 0 and len(a["history"]) == 1
        assert a["history"][0]["stage"] in ("assistant1", "assistant2")
    assert report["teacher"]["arch"] == "convnet" and report["gap"] is not None
    assert_student_loads_back(spec, tmp_path / "out", report)

    # A second attempt with the same checkpoints replays every finished link without training.
    again = Stages()
    second = run(spec, tmp_path / "out2", callbacks=again, checkpoints=store).to_json()
    assert again.trained == ["evaluate", "export"]
    assert second["student"]["accuracy"] == report["student"]["accuracy"]
    assert second["assistants"][1]["accuracy"] == report["assistants"][1]["accuracy"]


def test_no_assistants_is_plain_kd_bit_for_bit(tmp_path: Path) -> None:
    plain = run(parse_spec(job("kd")), tmp_path / "a").to_json()
    empty = run(parse_spec(job("kd", assistants=[])), tmp_path / "b").to_json()
    assert plain["assistants"] == empty["assistants"] == []
    a = load_file(tmp_path / "a" / "student.safetensors")
    b = load_file(tmp_path / "b" / "student.safetensors")
    assert a.keys() == b.keys()
    assert all(a[k].equal(b[k]) for k in a)


def test_a_changed_assistant_retrains_the_links_after_it(tmp_path: Path) -> None:
    store = FolderCheckpoints(tmp_path / "ckpt")
    run(parse_spec(job("ta", assistants=[ASSISTANT])), tmp_path / "a", checkpoints=store)
    stages = Stages()
    changed = {"arch": "convnet", "kwargs": {"channels": [4, 4]}}
    run(parse_spec(job("ta", assistants=[changed])), tmp_path / "b", stages, store)
    assert stages.trained[:2] == ["assistant1", "distill"]  # the teacher is reused


@pytest.mark.parametrize(
    ("assistants", "loc", "words"),
    [
        ([{"arch": "nope"}], "assistants.0.arch", "not a known architecture"),
        ([ASSISTANT, {"kwargs": {}}], "assistants.1.arch", "required field is missing"),
        ([{"arch": "mlp", "width": 3}], "assistants.0.width", "unknown key"),
    ],
)
def test_spec_errors_name_the_assistant(assistants: list, loc: str, words: str) -> None:
    with pytest.raises(SpecError) as exc:
        parse_spec(job("ta", assistants=assistants))
    assert any(e[0] == loc and words in e[1] for e in exc.value.errors), exc.value.errors


def test_feature_method_needs_its_layers_on_every_assistant(tmp_path: Path) -> None:
    at = {"name": "at", "student_layers": ["block1"], "teacher_layers": ["block1"]}
    spec = job(
        "ta",
        student={"arch": "convnet", "kwargs": {"channels": [4, 8]}},
        assistants=[{"arch": "mlp"}],
        method=at,
    )
    with pytest.raises(InputError) as exc:
        run(parse_spec(spec), tmp_path)
    assert exc.value.field == "assistants.0.arch"
    assert "method.student_layers" in exc.value.message and "block1" in exc.value.message
