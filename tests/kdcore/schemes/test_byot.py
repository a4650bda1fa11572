"""Be your own teacher (`method: byot`): the loss by hand with one auxiliary head, gradients to
the heads and the student, a wrong stage name listing the modules, a whole job on digits."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from kdcore.errors import InputError
from kdcore.features import FeatureHooks
from kdcore.methods import registry
from kdcore.methods.base import StepOutputs
from kdcore.models.registry import build_model
from kdcore.pipeline import run
from kdcore.validation import parse_spec

from ._helpers import assert_student_loads_back, job

RESNET_BYOT = {"name": "byot", "stages": ["layer1", "layer2"], "final_stage": "layer3"}


def test_one_head_matches_the_hand_computed_value() -> None:
    # One shallow stage "s" with (B, 1) features x = [2, −1]; its head is h = relu(1·x + 0) = [2, 0]
    # (F_1) and q_1 = [h, −h] = [[2, −2], [0, 0]]. The final stage gives F_C = [1, 0.5] and the
    # student's logits q_C = [[3, 0], [0, 3]]; labels y = [0, −1] (row 2 unlabelled).
    # α = 0.5, T = 2, λ = 0.1:
    #   CE(q_C, y)  = log(1 + e^−3)                                  = 0.0485874 (row 1 only)
    #   CE(q_1, y)  = log(1 + e^−4)                                  = 0.0181499 (row 1 only)
    #   KL row 1    = KL(σ([1.5, 0]) ‖ σ([1, −1]))                   = 0.0167275
    #   KL row 2    = KL(σ([0, 1.5]) ‖ σ([0, 0]))                    = 0.2180956
    #   feature     = mean((2 − 1)², (0 − 0.5)²) = (1 + 0.25) / 2    = 0.625
    #   L = 0.0485874 + 0.5·0.0181499 + 0.5·4·(0.0167275 + 0.2180956)/2 + 0.1·0.625 = 0.3549854
    method = registry.build(
        "byot",
        {
            "stages": ["s"],
            "final_stage": "final",
            "alpha": 0.5,
            "temperature": 2.0,
            "feature_weight": 0.1,
        },
    )
    features = {"s": torch.tensor([[2.0], [-1.0]]), "final": torch.tensor([[1.0], [0.5]])}
    method.num_classes = 2
    method.setup(features, {})
    head = method.heads[0]
    with torch.no_grad():
        head.body[0].weight.fill_(1.0)
        head.body[0].bias.zero_()
        head.fc.weight.copy_(torch.tensor([[1.0], [-1.0]]))
        head.fc.bias.zero_()
    logits = torch.tensor([[3.0, 0.0], [0.0, 3.0]])
    loss = method(StepOutputs(logits, torch.tensor([0, -1]), None, features))

    def sm(v: list[float]) -> list[float]:
        e = [math.exp(x) for x in v]
        return [x / sum(e) for x in e]

    def kl(p: list[float], q: list[float]) -> float:
        return sum(a * math.log(a / b) for a, b in zip(p, q, strict=True))

    ce_c, ce_1 = math.log(1 + math.exp(-3)), math.log(1 + math.exp(-4))
    kls = kl(sm([1.5, 0]), sm([1, -1])) + kl(sm([0, 1.5]), sm([0, 0]))
    expected = ce_c + 0.5 * ce_1 + 0.5 * 4 * kls / 2 + 0.1 * 0.625
    assert expected == pytest.approx(0.3549854, abs=1e-7)
    assert loss.item() == pytest.approx(expected, rel=1e-6)


def test_gradients_reach_the_heads_and_the_student_not_the_deepest_targets() -> None:
    torch.manual_seed(0)
    student = build_model("resnet8", (1, 8, 8), 10)
    x = torch.randn(4, 1, 8, 8)
    method = registry.build("byot", {k: v for k, v in RESNET_BYOT.items() if k != "name"})
    hooks = FeatureHooks(student, method.student_layers(), "method.student_layers", x[:2])
    with torch.no_grad():
        student.eval()
        logits = student(x[:2])
        student.train()
    method.num_classes = logits.shape[1]
    method.setup(hooks.take(), {})
    assert len(method.heads) == 2
    loss = method(StepOutputs(student(x), torch.tensor([1, 2, -1, 3]), None, hooks.take()))
    loss.backward()
    hooks.remove()
    for head in method.heads:
        grads = [p.grad for p in head.parameters()]
        assert grads and all(g is not None and g.abs().sum() > 0 for g in grads)
    for name in ("conv1.weight", "layer1.0.conv1.weight", "layer3.0.conv1.weight", "fc.weight"):
        grad = dict(student.named_parameters())[name].grad
        assert grad is not None and grad.abs().sum() > 0, name


def test_heads_are_built_from_a_fixed_seed() -> None:
    features = {"s": torch.randn(2, 3, 4, 4), "final": torch.randn(2, 5, 2, 2)}
    weights = []
    for seed in (1, 2):
        torch.manual_seed(seed)
        method = registry.build("byot", {"stages": ["s"], "final_stage": "final"})
        method.num_classes = 4
        method.setup(features, {})
        weights.append(method.heads[0].fc.weight.detach().clone())
        assert method.heads[0].fc.weight.shape == (4, 5)
    assert torch.equal(weights[0], weights[1])


def test_bad_stage_names_and_duplicates_are_spec_errors(tmp_path: Path) -> None:
    bad = parse_spec(
        job("byot-bad", student={"arch": "resnet8"}, method={**RESNET_BYOT, "stages": ["layer9"]})
    )
    with pytest.raises(InputError) as err:
        run(bad, tmp_path)
    text = str(err.value)
    assert "method.student_layers" in text and "'layer9'" in text
    assert "layer1 (2, 16, 8, 8)" in text and "layer3 (2, 64, 2, 2)" in text
    with pytest.raises(ValueError, match="stages"):
        registry.build("byot", {"stages": ["layer1", "layer3"], "final_stage": "layer3"})


def test_byot_job_runs_and_exports_the_plain_student(tmp_path: Path) -> None:
    spec = parse_spec(job("byot", student={"arch": "resnet8"}, method=RESNET_BYOT))
    report = run(spec, tmp_path).to_json()
    assert report["method"]["name"] == "byot"
    assert report["teacher_cache"] is False
    assert math.isfinite(report["history"][0]["train_loss"])
    # The export is the plain resnet8: no auxiliary head among its weights.
    assert_student_loads_back(spec, tmp_path, report)
    from safetensors.torch import load_file

    keys = load_file(str(tmp_path / "student.safetensors")).keys()
    assert keys and not any("head" in k for k in keys)
    assert set(keys) == set(build_model("resnet8", (1, 8, 8), 10).state_dict())


def test_resume_equals_uninterrupted_with_the_heads(tmp_path: Path) -> None:
    """The heads are rebuilt by `setup()` in a fresh method and loaded from the epoch checkpoint:
    a resumed run ends bit-identical to an uninterrupted one, heads included."""
    from kdcore.callbacks import Callbacks, EpochRecord
    from kdcore.checkpoint import FolderCheckpoints
    from kdcore.data.dataset import Dataset
    from kdcore.spec import TrainSpec
    from kdcore.train import StageContext, fit

    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(48, 1, 8, 8, generator=g), torch.randint(0, 3, (48,), generator=g)
    data = Dataset(x[:32], y[:32], x[32:], y[32:], 3, (1, 8, 8), None, "tiny")
    spec = TrainSpec(epochs=2, batch_size=16, device="cpu", seed=1)
    params = {k: v for k, v in RESNET_BYOT.items() if k != "name"}

    def student() -> torch.nn.Module:
        torch.manual_seed(0)
        return build_model("resnet8", (1, 8, 8), 3)

    class Crash(Exception):
        pass

    class CrashAfterFirst(Callbacks):
        def on_epoch_end(self, record: EpochRecord) -> None:
            if record.epoch == 1:
                raise Crash

    whole_method, whole = registry.build("byot", params), student()
    fit(whole, whole_method, StageContext(name="d", data=data, train=spec))
    ckpt = FolderCheckpoints(tmp_path)
    with pytest.raises(Crash):
        fit(
            student(),
            registry.build("byot", params),
            StageContext(
                name="d", data=data, train=spec, callbacks=CrashAfterFirst(), checkpoints=ckpt
            ),
        )
    resumed_method, resumed = registry.build("byot", params), student()
    res = fit(
        resumed, resumed_method, StageContext(name="d", data=data, train=spec, checkpoints=ckpt)
    )
    assert res.resumed_from_epoch == 1
    for a, b in ((whole, resumed), (whole_method, resumed_method)):
        sa, sb = a.state_dict(), b.state_dict()
        assert sa.keys() == sb.keys() and sa
        for k in sa:
            assert torch.equal(sa[k], sb[k]), k
