"""What the report says about a model: accuracy, the teacher-student gap, size, speed.

Works on anything callable as an `nn.Module`: eager models, TorchScript modules, and
parameterless wrappers around onnxruntime (those may expose `num_params` and
`size_bytes` attributes, since they have no state dict to measure).
"""

from __future__ import annotations

import copy
import statistics
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from typing import Any

import safetensors.torch
import torch
from torch import Tensor, nn

Device = torch.device | str


@contextmanager
def _eval_mode(model: nn.Module) -> Iterator[nn.Module]:
    """Eval mode for the duration; afterwards every submodule gets its own mode back.

    Restoring per submodule (not `model.train(was_training)`) keeps deliberately
    frozen parts, e.g. a BatchNorm kept in eval during fine-tuning, as they were.
    """
    modes = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        yield model
    finally:
        for m, training in modes:
            m.training = training


def _tensors(model: nn.Module) -> list[Tensor]:
    return [*model.parameters(), *model.buffers()]


def _on_device(model: nn.Module, device: torch.device) -> nn.Module:
    """The model itself when it already lives on `device`, else a copy moved there.

    Copying instead of moving keeps the caller's model where the caller put it.
    """
    tensors = _tensors(model)
    if all(t.device == device for t in tensors):
        return model
    return copy.deepcopy(model).to(device)


def _resolve(device: Device) -> torch.device:
    dev = torch.device(device)
    if dev.type == "cuda" and dev.index is None:
        dev = torch.device("cuda", torch.cuda.current_device())
    return dev


@torch.no_grad()
def predict_logits(
    model: nn.Module, x: Tensor, batch_size: int = 512, device: Device = "cpu"
) -> Tensor:
    """Logits for `x` in eval mode, batched to bound memory; CPU float32, mode restored."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    dev = _resolve(device)
    runner = _on_device(model, dev)
    outs: list[Tensor] = []
    with _eval_mode(model), _eval_mode(runner):
        for start in range(0, max(len(x), 1), batch_size):
            out = runner(x[start : start + batch_size].to(dev))
            if isinstance(out, tuple | list):  # models that also return features
                out = out[0]
            outs.append(out.detach().float().cpu())
    return torch.cat(outs) if len(outs) > 1 else outs[0]


def accuracy_from_logits(logits: Tensor, y: Tensor) -> float:
    """Top-1 accuracy in percent; `y` holds class indices (or one-hot/soft rows)."""
    if y.ndim == 2:
        y = y.argmax(dim=1)
    if logits.ndim != 2:
        raise ValueError(f"logits must be (N, classes), got shape {tuple(logits.shape)}")
    if len(logits) != len(y):
        raise ValueError(f"{len(logits)} logits rows but {len(y)} labels")
    if len(y) == 0:
        # An empty split has no accuracy; returning 0 or 100 would mislead a gate.
        raise ValueError("accuracy of an empty set is undefined")
    correct = (logits.argmax(dim=1) == y.to(logits.device).long()).sum().item()
    return 100.0 * correct / len(y)


def accuracy(
    model: nn.Module, x: Tensor, y: Tensor, batch_size: int = 512, device: Device = "cpu"
) -> float:
    """Top-1 accuracy of `model` on (x, y), in percent 0..100.

    Counted on `device` batch by batch under `torch.inference_mode` (no logits gathered or
    copied to the host: one small read-back per batch); eval mode for the duration, modes
    restored."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if y.ndim == 2:
        y = y.argmax(dim=1)
    if len(x) != len(y):
        raise ValueError(f"{len(x)} rows but {len(y)} labels")
    if len(y) == 0:
        # An empty split has no accuracy; returning 0 or 100 would mislead a gate.
        raise ValueError("accuracy of an empty set is undefined")
    dev = _resolve(device)
    runner = _on_device(model, dev)
    correct = 0
    with _eval_mode(model), _eval_mode(runner), torch.inference_mode():
        for start in range(0, len(x), batch_size):
            out = runner(x[start : start + batch_size].to(dev))
            if isinstance(out, tuple | list):  # models that also return features
                out = out[0]
            if out.ndim != 2:
                raise ValueError(f"logits must be (N, classes), got shape {tuple(out.shape)}")
            yb = y[start : start + batch_size].to(out.device).long()
            correct += int((out.argmax(dim=1) == yb).sum())
    return 100.0 * correct / len(y)


def count_params(model: nn.Module) -> int:
    """Parameters, trainable and frozen (shared ones once); `num_params` wins if present."""
    declared = getattr(model, "num_params", None)
    if declared is not None:
        return int(declared() if callable(declared) else declared)
    return sum(p.numel() for p in model.parameters())


def size_bytes(model: nn.Module) -> int:
    """Bytes of the state dict serialised as safetensors: what the student costs on disk.

    Tensors that are the same tensor under two names (tied weights) are stored once,
    as `safetensors.torch.save_model` would. A model with no state is 0 bytes unless
    it declares `size_bytes` (e.g. an onnxruntime wrapper reporting its file size).
    """
    declared = getattr(model, "size_bytes", None)
    if declared is not None:
        return int(declared() if callable(declared) else declared)
    state = model.state_dict()
    if not state:
        return 0
    seen: set[tuple[Any, ...]] = set()
    unique: dict[str, Tensor] = {}
    for name, t in state.items():
        t = t.detach()
        key = (t.device, t.untyped_storage().data_ptr(), t.storage_offset(), t.shape, t.stride())
        if key in seen:
            continue
        seen.add(key)
        # Clone: safetensors refuses tensors that merely overlap in storage.
        unique[name] = t.cpu().contiguous().clone()
    return len(safetensors.torch.save(unique))


def cpu_latency_ms(model: nn.Module, example: Tensor, runs: int = 20, warmup: int = 3) -> float:
    """Median wall-clock milliseconds per forward of `example` on CPU (eval, no_grad).

    The median resists the odd scheduler hiccup; the thread count is left as the
    process has it so figures match how the caller will actually run the model.
    """
    if runs < 1:
        raise ValueError(f"runs must be >= 1, got {runs}")
    cpu = torch.device("cpu")
    runner = _on_device(model, cpu)
    x = example.to(cpu)
    times: list[float] = []
    with _eval_mode(model), _eval_mode(runner), torch.no_grad():
        for _ in range(max(warmup, 0)):
            runner(x)
        for _ in range(runs):
            start = time.perf_counter()
            runner(x)
            times.append((time.perf_counter() - start) * 1000.0)
    return float(statistics.median(times))


@dataclass
class ModelSummary:
    """The figures the report shows for one model."""

    accuracy: float  # percent
    params: int
    size_bytes: int
    latency_ms: float  # median CPU ms per batch of `latency_batch_size`

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def summarize(
    model: nn.Module,
    x_val: Tensor,
    y_val: Tensor,
    latency_batch_size: int = 32,
    runs: int = 20,
    device: Device = "cpu",
) -> ModelSummary:
    """Accuracy on the held-out split (on `device`), size, and CPU latency in one go."""
    if len(x_val) == 0:
        raise ValueError("x_val is empty")
    return ModelSummary(
        accuracy=accuracy(model, x_val, y_val, device=device),
        params=count_params(model),
        size_bytes=size_bytes(model),
        latency_ms=cpu_latency_ms(model, x_val[:latency_batch_size].cpu(), runs=runs),
    )


def gap(teacher_acc: float, student_acc: float) -> float:
    """Teacher minus student accuracy, in points; positive means the student is worse."""
    return teacher_acc - student_acc
