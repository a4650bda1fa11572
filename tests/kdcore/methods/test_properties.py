"""The correctness properties of each method (papers/methods.md), on random tensors in float64."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from kdcore.errors import InputError
from kdcore.methods import registry
from kdcore.methods.at import at_pair_loss
from kdcore.methods.base import StepOutputs
from kdcore.methods.cc import cc_pair_loss
from kdcore.methods.dkd import dkd_parts
from kdcore.methods.rkd import rkd_pair_losses
from kdcore.methods.sp import sp_pair_loss
from kdcore.spec import SpecError
from kdcore.validation import parse_spec

D = torch.float64


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def orthogonal(n: int, g: torch.Generator) -> torch.Tensor:
    q, _ = torch.linalg.qr(torch.randn(n, n, generator=g, dtype=D))
    return q


def features_out(
    s: dict[str, torch.Tensor], t: dict[str, torch.Tensor], b: int, targets: list[int] | None = None
) -> StepOutputs:
    g = gen(9)
    return StepOutputs(
        torch.randn(b, 3, generator=g, dtype=D),
        torch.tensor(targets if targets is not None else [0] * b),
        torch.randn(b, 3, generator=g, dtype=D),
        s,
        t,
    )


# --- KD, DKD


def test_kd_kl_term_is_zero_for_equal_logits() -> None:
    z = torch.randn(5, 7, generator=gen(), dtype=D)
    out = StepOutputs(z, torch.tensor([0, 1, -1, 3, 4]), z.clone())
    kd = registry.build("kd", {"temperature": 4.0, "alpha": 1.0})
    assert kd.distill_loss(out).item() == pytest.approx(0.0, abs=1e-6)
    assert kd(out).item() == pytest.approx(0.0, abs=1e-6)


@pytest.mark.parametrize("temperature", [1.0, 4.0])
def test_dkd_decomposes_kl_exactly(temperature: float) -> None:
    g = gen(1)
    zs = torch.randn(64, 10, generator=g, dtype=D) * 3
    zt = torch.randn(64, 10, generator=g, dtype=D) * 3
    target = torch.randint(0, 10, (64,), generator=g)
    tckd, nckd, mass = dkd_parts(zs, zt, target, temperature)
    log_ps = F.log_softmax(zs / temperature, 1)
    log_pt = F.log_softmax(zt / temperature, 1)
    kl = (log_pt.exp() * (log_pt - log_ps)).sum(1)
    p_target = log_pt.exp().gather(1, target[:, None]).squeeze(1)
    assert torch.allclose(mass, 1 - p_target, atol=1e-12)
    assert (kl - (tckd + (1 - p_target) * nckd)).abs().max().item() < 1e-6
    assert (tckd >= -1e-12).all() and (nckd >= -1e-12).all()


def test_dkd_unlabelled_rows_use_the_teacher_argmax_and_get_no_ce() -> None:
    g = gen(2)
    zs, zt = torch.randn(4, 6, generator=g, dtype=D), torch.randn(4, 6, generator=g, dtype=D)
    dkd = registry.build("dkd", {"warmup": 0})
    as_teacher_says = StepOutputs(zs, zt.argmax(1), zt)
    unlabelled = StepOutputs(zs, torch.full((4,), -1), zt)
    assert dkd.distill_loss(unlabelled).item() == pytest.approx(
        dkd.distill_loss(as_teacher_says).item(), rel=1e-12
    )
    assert dkd(unlabelled).item() == pytest.approx(dkd.distill_loss(unlabelled).item(), rel=1e-12)


def test_dkd_warmup_ramps_the_term_over_w_epochs() -> None:
    g = gen(3)
    out = StepOutputs(
        torch.randn(4, 5, generator=g, dtype=D),
        torch.tensor([0, 1, 2, 3]),
        torch.randn(4, 5, generator=g, dtype=D),
    )
    dkd = registry.build("dkd", {"warmup": 20, "ce_weight": 0.0})
    dkd.start_epoch(20, 40)
    full = dkd(out).item()
    dkd.start_epoch(5, 40)
    assert dkd(out).item() == pytest.approx(full * 5 / 20, rel=1e-12)
    dkd.start_epoch(35, 40)
    assert dkd(out).item() == pytest.approx(full, rel=1e-12)


# --- AT


def test_at_invariant_to_feature_scale_and_channel_count() -> None:
    g = gen(4)
    s = torch.randn(3, 4, 6, 6, generator=g, dtype=D)
    t = torch.randn(3, 16, 3, 3, generator=g, dtype=D)
    base = at_pair_loss(s, t, 2.0).item()
    assert base > 1e-4
    assert at_pair_loss(7.5 * s, t, 2.0).item() == pytest.approx(base, rel=1e-10)
    assert at_pair_loss(s, 0.01 * t, 2.0).item() == pytest.approx(base, rel=1e-10)
    # The same maps spread over 3x the channels: the same attention, the same loss.
    assert at_pair_loss(torch.cat([s, s, s], 1), t, 2.0).item() == pytest.approx(base, rel=1e-10)
    # A student whose channels are (scaled) copies of the teacher's has nothing left to learn.
    t_same_size = torch.randn(3, 16, 6, 6, generator=g, dtype=D)
    copies = 3.0 * torch.cat([t_same_size, t_same_size], 1)
    assert at_pair_loss(copies, t_same_size, 2.0).item() == pytest.approx(0.0, abs=1e-20)


# --- RKD, SP, CC


def test_rkd_zero_for_a_rotated_scaled_shifted_teacher() -> None:
    g = gen(5)
    t = torch.randn(12, 6, generator=g, dtype=D)
    s = 3.7 * t @ orthogonal(6, g) + torch.randn(1, 6, generator=g, dtype=D)
    dist, angle = rkd_pair_losses(s, t)
    assert dist.item() < 1e-20 and angle.item() < 1e-20
    other_dist, other_angle = rkd_pair_losses(torch.randn(12, 6, generator=g, dtype=D), t)
    assert other_dist.item() > 1e-3 and other_angle.item() > 1e-3


def test_sp_zero_for_an_orthogonal_map_of_the_teacher() -> None:
    g = gen(6)
    t = torch.randn(8, 2, 3, 3, generator=g, dtype=D)
    s = (t.flatten(1) @ orthogonal(18, g)).view(8, 18)
    assert sp_pair_loss(s, t).item() < 1e-25
    assert sp_pair_loss(torch.randn(8, 18, generator=g, dtype=D), t).item() > 1e-4


def test_cc_zero_for_a_scaled_rotated_teacher() -> None:
    g = gen(7)
    t = torch.randn(10, 5, generator=g, dtype=D)
    s = 0.3 * t @ orthogonal(5, g)
    assert cc_pair_loss(s, t, 0.4, 2).item() < 1e-25
    assert cc_pair_loss(torch.randn(10, 5, generator=g, dtype=D), t, 0.4, 2).item() > 1e-6


# --- FitNets, FSP


def test_fitnets_zero_when_the_regressor_maps_student_onto_teacher() -> None:
    g = gen(8)
    t = torch.randn(2, 3, 4, 4, generator=g, dtype=D)
    fit = registry.build(
        "fitnets", {"student_layers": ["s"], "teacher_layers": ["t"], "ce_weight": 0.0}
    )
    fit.setup({"s": t}, {"t": t})
    fit.double()
    reg = fit.regressors[0]
    with torch.no_grad():
        reg.weight.copy_(torch.eye(3, dtype=D)[:, :, None, None])
        reg.bias.zero_()
    assert fit(features_out({"s": t}, {"t": t}, 2)).item() == 0.0


def test_fitnets_builds_conv_and_linear_regressors_from_shapes() -> None:
    fit = registry.build("fitnets", {"student_layers": ["a", "b"], "teacher_layers": ["c", "d"]})
    fit.setup(
        {"a": torch.zeros(2, 4, 8, 8), "b": torch.zeros(2, 7)},
        {"c": torch.zeros(2, 16, 4, 4), "d": torch.zeros(2, 32)},
    )
    conv, lin = fit.regressors
    assert isinstance(conv, torch.nn.Conv2d) and conv.weight.shape == (16, 4, 1, 1)
    assert isinstance(lin, torch.nn.Linear) and lin.weight.shape == (32, 7)
    assert {k.split(".")[0] for k in fit.state_dict()} == {"regressors"}


def test_fitnets_mismatched_ranks_name_the_field() -> None:
    fit = registry.build("fitnets", {"student_layers": ["a"], "teacher_layers": ["b"]})
    with pytest.raises(InputError) as exc:
        fit.setup({"a": torch.zeros(2, 4, 8, 8)}, {"b": torch.zeros(2, 32)})
    assert exc.value.field == "method.teacher_layers" and "(2, 32)" in exc.value.message


def test_fsp_zero_for_identical_features() -> None:
    g = gen(10)
    f = {
        "a": torch.randn(2, 3, 4, 4, generator=g, dtype=D),
        "b": torch.randn(2, 5, 2, 2, generator=g, dtype=D),
    }
    fsp = registry.build(
        "fsp", {"student_pairs": [["a", "b"]], "teacher_pairs": [["a", "b"]], "ce_weight": 0.0}
    )
    fsp.setup(f, f)
    assert fsp(features_out(f, f, 2)).item() == 0.0


def test_fsp_channel_mismatch_is_an_input_error_naming_the_fields() -> None:
    student = {"a": torch.zeros(2, 4, 8, 8), "b": torch.zeros(2, 8, 8, 8)}
    teacher = {"a": torch.zeros(2, 16, 8, 8), "b": torch.zeros(2, 32, 8, 8)}
    params = {"student_pairs": [["a", "b"]], "teacher_pairs": [["a", "b"]]}
    with pytest.raises(InputError) as exc:
        registry.build("fsp", params).setup(student, teacher)
    assert exc.value.field == "method.teacher_pairs"
    assert "4×8" in exc.value.message and "16×32" in exc.value.message
    assert "method.student_pairs" in exc.value.message
    combined = registry.build("combined", {"terms": [{"name": "fsp", **params}]})
    with pytest.raises(InputError) as exc:
        combined.setup(student, teacher)
    assert exc.value.field == "method.terms.0.teacher_pairs"


def test_feature_methods_reject_vectors_where_they_need_maps() -> None:
    for name, params in (
        ("at", {"student_layers": ["a"], "teacher_layers": ["a"]}),
        ("fsp", {"student_pairs": [["a", "a"]], "teacher_pairs": [["a", "a"]]}),
    ):
        with pytest.raises(InputError, match=r"\(B, C, H, W\)"):
            registry.build(name, params).setup({"a": torch.zeros(2, 5)}, {"a": torch.zeros(2, 5)})


def test_a_layer_that_never_ran_is_an_input_error() -> None:
    sp = registry.build("sp", {"student_layers": ["a"], "teacher_layers": ["b"]})
    with pytest.raises(InputError, match="produced no tensor") as exc:
        sp.setup({"a": torch.zeros(2, 3)}, {})
    assert exc.value.field == "method.teacher_layers"


# --- combined


def test_combined_is_ce_once_plus_weighted_terms() -> None:
    g = gen(11)
    s = {"x": torch.randn(4, 2, 4, 4, generator=g, dtype=D)}
    t = {"y": torch.randn(4, 6, 4, 4, generator=g, dtype=D)}
    out = features_out(s, t, 4, targets=[0, 2, -1, 1])
    layers = {"student_layers": ["x"], "teacher_layers": ["y"]}
    kd = registry.build("kd", {"temperature": 3.0, "alpha": 1.0})
    at = registry.build("at", {**layers, "ce_weight": 0.0})
    ce = registry.build("ce")
    combined = registry.build(
        "combined",
        {
            "ce_weight": 0.5,
            "terms": [{"name": "kd", "weight": 2.0, "temperature": 3.0}, {"name": "at", **layers}],
        },
    )
    expected = 0.5 * ce(out) + 2.0 * kd(out) + at(out)
    assert combined(out).item() == pytest.approx(expected.item(), rel=1e-6)
    assert combined.student_layers() == ["x"] and combined.teacher_layers() == ["y"]


def test_combined_layers_are_the_union_and_epochs_reach_the_terms() -> None:
    combined = registry.build(
        "combined",
        {
            "terms": [
                {"name": "dkd", "warmup": 10},
                {"name": "at", "student_layers": ["a", "b"], "teacher_layers": ["c", "d"]},
                {"name": "rkd"},
            ]
        },
    )
    assert combined.student_layers() == ["a", "b", "pool"]
    assert combined.teacher_layers() == ["c", "d", "pool"]
    combined.start_epoch(5, 10)
    assert combined.terms[0].warmup_factor() == 0.5


def spec_errors(method: dict) -> dict[str, str]:
    spec = {
        "name": "x",
        "teacher": {"arch": "convnet", "train": {"epochs": 1}},
        "student": {"arch": "convnet"},
        "data": {"source": "digits"},
        "method": method,
    }
    with pytest.raises(SpecError) as exc:
        parse_spec(spec)
    return dict(exc.value.errors)


def test_combined_errors_name_the_term_and_key() -> None:
    errors = spec_errors(
        {
            "name": "combined",
            "terms": [
                {"name": "kd", "alpha": 0.5},
                {"name": "at", "beta": -1, "student_layers": ["a"], "teacher_layers": ["b"]},
                {"name": "ce"},
                {"name": "nope"},
                {"name": "sp", "student_layers": ["a"], "teacher_layers": ["b", "c"]},
                {"name": "rkd", "weight": -2, "ce_weight": 1},
            ],
        }
    )
    assert set(errors) == {
        "method.terms.0.alpha",
        "method.terms.1.beta",
        "method.terms.2.name",
        "method.terms.3.name",
        "method.terms.4.teacher_layers",
        "method.terms.5.weight",
        "method.terms.5.ce_weight",
    }
    assert "method.ce_weight" in errors["method.terms.0.alpha"]
    assert "added once" in errors["method.terms.2.name"]
    assert "not a known method" in errors["method.terms.3.name"]


def test_method_spec_errors_name_the_key() -> None:
    assert set(spec_errors({"name": "at", "student_layers": ["a"]})) == {"method.teacher_layers"}
    assert set(spec_errors({"name": "sp", "student_layers": ["a"], "teacher_layers": []})) == {
        "method.teacher_layers"
    }
    assert set(spec_errors({"name": "dkd", "temperature": 0, "warmup": -1})) == {
        "method.temperature",
        "method.warmup",
    }
    assert set(spec_errors({"name": "combined", "terms": []})) == {"method.terms"}


def test_combined_params_fill_in_defaults_and_revalidate() -> None:
    params = registry.get("combined").params.model_validate(
        {"terms": [{"name": "kd"}, {"name": "rkd", "angle_weight": 5}]}
    )
    dumped = params.model_dump()
    assert dumped["terms"][0] == {"name": "kd", "weight": 1.0, "temperature": 4.0}
    assert dumped["terms"][1]["angle_weight"] == 5 and dumped["terms"][1]["distance_weight"] == 25
    again = registry.get("combined").params.model_validate(dumped)
    assert again.model_dump() == dumped
