"""Deep mutual learning (`method: dml`): the loss by hand, gradients to every peer, and a whole
job through `kdcore.pipeline.run` exporting one peer that loads back."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from kdcore.methods import registry
from kdcore.methods.base import StepOutputs
from kdcore.pipeline import run
from kdcore.schemes.mutual import PeerGroup
from kdcore.spec import SpecError
from kdcore.validation import parse_spec

from ._helpers import assert_student_loads_back, job


def _out(logits: list[torch.Tensor], y: torch.Tensor) -> StepOutputs:
    return StepOutputs(
        logits[0], y, student_features={f"peers.{k}": z for k, z in enumerate(logits)}
    )


def test_one_peer_is_cross_entropy() -> None:
    z = torch.randn(5, 3)
    y = torch.tensor([0, 2, 1, -1, 2])
    loss = registry.build("dml", {"peers": 1})(_out([z], y))
    expected = F.cross_entropy(z, y, ignore_index=-1)
    assert loss.item() == pytest.approx(expected.item(), abs=1e-6)


def test_two_peers_match_the_hand_computed_value() -> None:
    # One row, label 0, two classes. Peer 0: z0 = (ln 3, 0) → p = (0.75, 0.25);
    # peer 1: z1 = (0, 0) → q = (0.5, 0.5). K = 2, so 1/(K − 1) = 1.
    #   CE0 = −ln 0.75 = 0.2876821;      CE1 = −ln 0.5 = 0.6931472
    #   KL(q ‖ p) = 0.5·ln(0.5/0.75) + 0.5·ln(0.5/0.25) = 0.5·(−0.4054651) + 0.5·0.6931472
    #             = 0.1438410
    #   KL(p ‖ q) = 0.75·ln(1.5) + 0.25·ln(0.5) = 0.3040988 − 0.1732868 = 0.1308120
    #   L = CE0 + KL(q ‖ p) + CE1 + KL(p ‖ q) = 0.2876821 + 0.1438410 + 0.6931472 + 0.1308120
    #     = 1.2554823
    # A second, unlabelled row equal in both peers adds no CE and zero KL: batchmean halves
    # the KL terms only, so L = 0.2876821 + 0.6931472 + (0.1438410 + 0.1308120) / 2.
    z0 = torch.tensor([[math.log(3.0), 0.0]])
    z1 = torch.tensor([[0.0, 0.0]])
    method = registry.build("dml")
    assert not method.needs_teacher
    assert method(_out([z0, z1], torch.tensor([0]))).item() == pytest.approx(1.2554823, abs=1e-6)
    row = torch.tensor([[1.0, 2.0]])
    both = method(_out([torch.cat([z0, row]), torch.cat([z1, row])], torch.tensor([0, -1])))
    assert both.item() == pytest.approx(0.2876821 + 0.6931472 + 0.2746530 / 2, abs=1e-6)


def test_gradients_reach_every_peer_through_the_group() -> None:
    torch.manual_seed(0)
    group = PeerGroup([torch.nn.Linear(4, 3) for _ in range(3)], lead=1)
    method = registry.build("dml", {"peers": 3})
    feats: dict[str, torch.Tensor] = {}
    for name in method.student_layers():
        module = dict(group.named_modules())[name]
        module.register_forward_hook(lambda _m, _i, o, name=name: feats.__setitem__(name, o))
    x = torch.randn(6, 4)
    logits = group(x)
    assert torch.equal(logits, feats["peers.1"])
    method(
        StepOutputs(logits, torch.tensor([0, 1, 2, 0, 1, -1]), student_features=feats)
    ).backward()
    for peer in group.peers:
        assert peer.weight.grad is not None and peer.weight.grad.abs().sum() > 0


def test_dml_job_exports_the_best_peer_that_loads_back(tmp_path: Path) -> None:
    spec = parse_spec(job("dml", method={"name": "dml", "peers": 2}))
    report = run(spec, tmp_path).to_json()
    peers = report["peers"]
    assert peers["count"] == 2 and len(peers["accuracies"]) == 2
    assert peers["accuracies"][peers["exported"]] == max(peers["accuracies"])
    assert report["student"]["accuracy"] == pytest.approx(max(peers["accuracies"]), abs=1e-3)
    assert_student_loads_back(spec, tmp_path, report)
    assert report["teacher_cache"] is False


def test_dml_named_peer_and_errors(tmp_path: Path) -> None:
    report = run(parse_spec(job("dml", method={"name": "dml", "export": 1})), tmp_path).to_json()
    assert report["peers"]["exported"] == 1
    with pytest.raises(SpecError) as exc:
        parse_spec(job("dml", method={"name": "dml", "peers": 2, "export": 2}))
    assert exc.value.errors[0][0] == "method.export"
    with pytest.raises(SpecError) as err:  # at submit now, before anything trains
        parse_spec(job("dml", method={"name": "dml"}, generations=2))
    assert err.value.errors[0][0] == "generations"
