"""Report figures against values worked out by hand."""

from __future__ import annotations

import pytest
import safetensors.torch
import torch
from torch import Tensor, nn

from kdcore.evaluate import (
    ModelSummary,
    accuracy,
    accuracy_from_logits,
    count_params,
    cpu_latency_ms,
    gap,
    predict_logits,
    size_bytes,
    summarize,
)


def _bn_net() -> nn.Module:
    """Linear → BatchNorm → Dropout: train and eval mode give different outputs."""
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(4, 8), nn.BatchNorm1d(8), nn.Dropout(0.5), nn.Linear(8, 3))
    net.train()
    with torch.no_grad():
        for _ in range(3):
            net(torch.randn(32, 4) * 3 + 1)
    return net


class OrtLike(nn.Module):
    """Stands in for an onnxruntime wrapper: no parameters, declared size and count."""

    num_params = 1234
    size_bytes = 5678

    def forward(self, x: Tensor) -> Tensor:
        return x[:, :3] * 2.0


def test_accuracy_from_logits_by_hand() -> None:
    logits = torch.tensor([[2.0, 1.0, 0.0], [0.0, 3.0, 1.0], [0.1, 0.2, 0.9], [5.0, 0.0, 0.0]])
    # predictions: 0, 1, 2, 0
    assert accuracy_from_logits(logits, torch.tensor([0, 1, 2, 1])) == 75.0
    assert accuracy_from_logits(logits, torch.tensor([0, 1, 2, 0])) == 100.0
    assert accuracy_from_logits(logits, torch.tensor([1, 0, 0, 2])) == 0.0
    assert accuracy_from_logits(logits[:3], torch.tensor([0, 0, 0])) == pytest.approx(100 / 3)
    one_hot = nn.functional.one_hot(torch.tensor([0, 1, 2, 1]), 3)
    assert accuracy_from_logits(logits, one_hot) == 75.0


def test_accuracy_from_logits_rejects_bad_input() -> None:
    with pytest.raises(ValueError, match="labels"):
        accuracy_from_logits(torch.zeros(4, 3), torch.zeros(3, dtype=torch.long))
    with pytest.raises(ValueError, match="empty"):
        accuracy_from_logits(torch.zeros(0, 3), torch.zeros(0, dtype=torch.long))


def test_accuracy_of_a_model_by_hand() -> None:
    model = nn.Linear(3, 3, bias=False)
    with torch.no_grad():
        model.weight.copy_(torch.eye(3))  # logits == inputs
    x = torch.tensor([[1.0, 0, 0], [0, 1.0, 0], [0, 0, 1.0], [0, 1.0, 0], [1.0, 0, 0]])
    y = torch.tensor([0, 1, 2, 2, 2])
    assert accuracy(model, x, y) == 60.0
    assert accuracy(model, x, y, batch_size=2) == 60.0


def test_predict_logits_batched_equals_full_pass_and_restores_mode() -> None:
    net = _bn_net()
    net[2].eval()  # a deliberately frozen submodule must stay frozen
    modes = [m.training for m in net.modules()]
    x = torch.randn(10, 4)

    full = predict_logits(net, x, batch_size=512)
    batched = predict_logits(net, x, batch_size=3)

    assert [m.training for m in net.modules()] == modes
    assert full.dtype == torch.float32 and full.device.type == "cpu"
    assert full.shape == (10, 3) and not full.requires_grad
    torch.testing.assert_close(batched, full)
    with torch.no_grad():
        torch.testing.assert_close(full, net.eval()(x))  # it really ran in eval mode


def test_predict_logits_casts_to_float32_and_handles_scripted() -> None:
    net = _bn_net().eval()
    x = torch.randn(6, 4)
    want = predict_logits(net, x)
    double = predict_logits(_bn_net().double().eval(), x.double())
    assert double.dtype == torch.float32
    scripted = torch.jit.script(_bn_net())
    scripted.train()
    torch.testing.assert_close(predict_logits(scripted, x, batch_size=4), want)
    assert scripted.training
    with pytest.raises(ValueError, match="batch_size"):
        predict_logits(net, x, batch_size=0)


def test_count_params_by_hand() -> None:
    assert count_params(nn.Linear(3, 2)) == 8  # 3*2 weights + 2 biases
    frozen = nn.Sequential(nn.Linear(3, 2), nn.Linear(2, 1, bias=False))
    frozen[0].requires_grad_(False)
    assert count_params(frozen) == 8 + 2
    assert count_params(nn.ReLU()) == 0
    bn = nn.BatchNorm1d(5)  # running stats are buffers, not parameters
    assert count_params(bn) == 10
    assert count_params(OrtLike()) == 1234
    assert count_params(torch.jit.script(nn.Linear(3, 2))) == 8


def test_count_params_counts_tied_weights_once() -> None:
    a = nn.Linear(4, 4, bias=False)
    tied = nn.Sequential(a, nn.ReLU(), a)
    assert count_params(tied) == 16


def test_size_bytes() -> None:
    lin = nn.Linear(3, 2)
    n = size_bytes(lin)
    assert n >= 4 * count_params(lin)
    assert n == len(safetensors.torch.save(dict(lin.state_dict())))
    bn = nn.BatchNorm1d(5)  # buffers are on disk too: 4 float vectors + an int64 counter
    assert size_bytes(bn) >= 4 * 4 * 5 + 8
    assert size_bytes(nn.ReLU()) == 0
    assert size_bytes(OrtLike()) == 5678
    assert size_bytes(torch.jit.script(lin)) == n


def test_size_bytes_with_tied_weights() -> None:
    a = nn.Linear(64, 64, bias=False)
    single = size_bytes(a)
    tied = nn.Sequential(a, nn.ReLU(), a)  # safetensors would refuse the shared storage
    assert single <= size_bytes(tied) < 2 * single


def test_cpu_latency_positive_and_mode_restored() -> None:
    net = _bn_net()
    ms = cpu_latency_ms(net, torch.randn(8, 4), runs=3, warmup=1)
    assert ms > 0
    assert net.training and all(m.training for m in net.modules())
    assert cpu_latency_ms(OrtLike(), torch.randn(2, 4), runs=2, warmup=0) > 0
    with pytest.raises(ValueError, match="runs"):
        cpu_latency_ms(net, torch.randn(8, 4), runs=0)


def test_summarize() -> None:
    model = nn.Linear(3, 3, bias=False)
    with torch.no_grad():
        model.weight.copy_(torch.eye(3))
    x = torch.eye(3).repeat(4, 1)  # 12 rows, classes 0,1,2,0,1,2,...
    y = torch.tensor([0, 1, 2] * 3 + [1, 1, 1])  # last three: one right
    s = summarize(model, x, y, latency_batch_size=5, runs=2)
    assert isinstance(s, ModelSummary)
    assert s.accuracy == pytest.approx(100 * 10 / 12)
    assert s.params == 9
    assert s.size_bytes == size_bytes(model)
    assert s.latency_ms > 0
    assert s.to_dict()["params"] == 9


def test_gap() -> None:
    assert gap(90.0, 85.5) == pytest.approx(4.5)
    assert gap(80.0, 82.0) == pytest.approx(-2.0)  # a student may beat its teacher
    assert gap(75.0, 75.0) == 0.0
