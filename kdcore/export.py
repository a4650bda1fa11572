"""Export a trained student and prove every file works by loading it back.

A file that cannot be loaded, or whose outputs drift from the eager student by more
than `TOLERANCE`, is worse than no file: a user would deploy it. So each format is
written, reloaded with the runtime a user would use, and compared on two batches of
different sizes (which also proves the batch dimension stayed dynamic).
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import io
import json
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import safetensors.torch
import torch
from torch import Tensor, nn

from kdcore.models import registry as model_registry

TOLERANCE = 1e-4

FILENAMES: dict[str, str] = {
    "torchscript": "student.torchscript.pt",
    "torch_export": "student.pt2",
    "onnx": "student.onnx",
    "safetensors": "student.safetensors",
}
KNOWN_FORMATS: tuple[str, ...] = tuple(FILENAMES)
CONFIG_FILENAME = "student.json"
REQUIRED_CONFIG_KEYS = ("arch", "kwargs", "input_shape", "num_classes")
ONNX_OPSET = 17

Runner = Callable[[Tensor], Tensor]


class ExportError(RuntimeError):
    """An export failed, or its file did not reproduce the eager student's outputs."""


@dataclass
class Artifact:
    """One exported file and the evidence that it works.

    For `format == "safetensors"` the architecture lives in a sidecar `student.json`
    next to `path` (same folder); it is needed to rebuild the model, see
    `load_safetensors_student`.
    """

    format: str
    path: Path
    sha256: str
    size_bytes: int
    max_abs_diff: float  # vs the eager student on the check batches

    def to_dict(self) -> dict[str, Any]:
        return {
            "format": self.format,
            "path": str(self.path),
            "sha256": self.sha256,
            "size_bytes": self.size_bytes,
            "max_abs_diff": self.max_abs_diff,
        }


# --------------------------------------------------------------------------- helpers


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    """Hash in chunks so a large student never sits in memory twice."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """Silence exporter chatter (deprecation notes, tracer warnings, printed summaries)."""
    sink = io.StringIO()
    with (
        warnings.catch_warnings(),
        contextlib.redirect_stdout(sink),
        contextlib.redirect_stderr(sink),
    ):
        warnings.simplefilter("ignore")
        yield


@contextlib.contextmanager
def _cpu_eval(model: nn.Module) -> Iterator[nn.Module]:
    """Yield a CPU eval-mode student without touching the caller's device or mode.

    A deep copy is the clean way; modules that refuse to be copied are moved and put
    in eval mode in place, then moved back with each submodule's mode restored.
    """
    try:
        student = copy.deepcopy(model)
    except Exception:
        student = None
    if student is not None:
        yield student.cpu().eval()
        return
    modes = [(m, m.training) for m in model.modules()]
    tensors = [*model.parameters(), *model.buffers()]
    device = tensors[0].device if tensors else torch.device("cpu")
    model.cpu().eval()
    try:
        yield model
    finally:
        model.to(device)
        for m, training in modes:
            m.training = training


def _check_batches(example: Tensor) -> list[Tensor]:
    """The example (at least 2 rows) plus a batch of a different size built from it."""
    x = example.detach().to("cpu", torch.float32).contiguous()
    if x.ndim == 0:
        raise ValueError("example must have a batch dimension")
    n = x.shape[0]
    if n == 0:
        raise ValueError("example batch is empty")
    if n < 2:  # batch 1 invites exporters to specialise the batch dim away
        x = x.repeat(2, *([1] * (x.ndim - 1)))
        n = 2
    m = n + 3  # a different, odd size
    idx = torch.arange(m) % n
    other = x.flip(0)[idx].clone()
    return [x, other]


def _as_tensor(out: Any, fmt: str) -> Tensor:
    if isinstance(out, Tensor):
        return out
    if isinstance(out, np.ndarray):
        return torch.from_numpy(out)
    if isinstance(out, list | tuple) and len(out) == 1:
        return _as_tensor(out[0], fmt)
    raise ExportError(f"{fmt}: expected the model to return one logits tensor, got {type(out)}")


def _max_abs_diff(runner: Runner, eager: nn.Module, batches: Sequence[Tensor], fmt: str) -> float:
    worst = 0.0
    with torch.no_grad():
        for x in batches:
            want = _as_tensor(eager(x), fmt).float()
            got = _as_tensor(runner(x), fmt).float()
            if got.shape != want.shape:
                raise ExportError(
                    f"{fmt}: output shape {tuple(got.shape)} != eager {tuple(want.shape)} "
                    f"on a batch of {x.shape[0]}"
                )
            if got.numel() == 0:
                continue
            if not torch.equal(got.isnan(), want.isnan()):
                return float("inf")  # NaNs where the eager student has none, or vice versa
            diff = (got - want).abs().nan_to_num(nan=0.0).max().item()  # equal infs → 0
            worst = max(worst, float(diff))
    return worst


# --------------------------------------------------------------------------- writers


def _write_torchscript(model: nn.Module, example: Tensor, path: Path, config: dict) -> None:
    try:
        scripted = torch.jit.trace(model, example, check_trace=False)
    except Exception:  # data-dependent control flow: try the compiler instead
        scripted = torch.jit.script(model)
    torch.jit.save(scripted, str(path))


def _write_torch_export(model: nn.Module, example: Tensor, path: Path, config: dict) -> None:
    # min=1 keeps single-row inference legal; the check uses batches >= 2 so the
    # exporter never sees a 0/1-sized example it would specialise on.
    batch = torch.export.Dim("batch", min=1)
    program = torch.export.export(model, (example,), dynamic_shapes=({0: batch},))
    torch.export.save(program, str(path))


def _write_onnx(model: nn.Module, example: Tensor, path: Path, config: dict) -> None:
    # The dynamo exporter is slow and fragile on small CPU boxes; the TorchScript-based
    # one handles every layer the zoo uses.
    torch.onnx.export(
        model,
        (example,),
        str(path),
        dynamo=False,
        input_names=["input"],
        output_names=["logits"],
        dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}},
        opset_version=ONNX_OPSET,
    )


def _write_safetensors(model: nn.Module, example: Tensor, path: Path, config: dict) -> None:
    # Clone: safetensors refuses tensors that share storage (tied weights, views).
    state = {k: v.detach().cpu().contiguous().clone() for k, v in model.state_dict().items()}
    safetensors.torch.save_file(state, str(path), metadata={"format": "pt"})
    config_path = path.with_name(CONFIG_FILENAME)
    config_path.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")


# --------------------------------------------------------------------------- loaders


def _load_torchscript(path: Path) -> Runner:
    module = torch.jit.load(str(path), map_location="cpu")
    module.eval()
    return module


def _load_torch_export(path: Path) -> Runner:
    return torch.export.load(str(path)).module()


def _load_onnx(path: Path) -> Runner:
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.log_severity_level = 3  # errors only
    session = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    input_name = session.get_inputs()[0].name

    def run(x: Tensor) -> Tensor:
        (logits,) = session.run(None, {input_name: x.detach().cpu().float().numpy()})
        return torch.from_numpy(logits)

    return run


def _load_safetensors(path: Path) -> Runner:
    return load_safetensors_student(path, path.with_name(CONFIG_FILENAME))


Writer = Callable[[nn.Module, Tensor, Path, dict], None]
_WRITERS: dict[str, Writer] = {
    "torchscript": _write_torchscript,
    "torch_export": _write_torch_export,
    "onnx": _write_onnx,
    "safetensors": _write_safetensors,
}
# Module-level so a test can swap one loader for a broken one and watch the check fail.
_LOADERS: dict[str, Callable[[Path], Runner]] = {
    "torchscript": _load_torchscript,
    "torch_export": _load_torch_export,
    "onnx": _load_onnx,
    "safetensors": _load_safetensors,
}


# --------------------------------------------------------------------------- public API


def load_safetensors_student(weights: Path, config_path: Path) -> nn.Module:
    """Rebuild the student from its zoo config (`student.json`) and load weights strictly.

    Strict loading means a config that no longer matches the weights fails loudly
    instead of leaving layers at their random initialisation.
    """
    config = json.loads(Path(config_path).read_text())
    missing = [k for k in REQUIRED_CONFIG_KEYS if k not in config]
    if missing:
        raise ValueError(f"{config_path}: config lacks {', '.join(missing)}")
    model = model_registry.build_model(
        config["arch"], config["input_shape"], config["num_classes"], **(config["kwargs"] or {})
    )
    state = safetensors.torch.load_file(str(weights), device="cpu")
    model.load_state_dict(state, strict=True)
    if "output" in config:  # a student whose forward returns more than the logits
        from kdcore.models.outputs import LogitsOutput

        model = LogitsOutput(model, config["output"], "student.output")
    return model.eval()


def export_student(
    model: nn.Module,
    formats: Sequence[str],
    out_dir: Path,
    example: Tensor,
    config: dict,
) -> list[Artifact]:
    """Write `model` in each of `formats` under `out_dir`, reload each and check it.

    `example` is a float32 input batch (a 1-row batch is repeated to 2 rows). `config`
    describes the architecture for the safetensors sidecar (`student.json`): at least
    "arch", "kwargs", "input_shape", "num_classes"; extra keys are kept. Raises
    `ExportError` when a format fails to export, load, or match the eager outputs within
    `TOLERANCE`; `ValueError` for an unknown format or an incomplete config.
    """
    formats = list(dict.fromkeys(formats))  # keep order, drop repeats
    unknown = [f for f in formats if f not in FILENAMES]
    if unknown:
        raise ValueError(
            f"unknown export format(s) {', '.join(map(repr, unknown))}; "
            f"known: {', '.join(KNOWN_FORMATS)}"
        )
    if "safetensors" in formats:
        missing = [k for k in REQUIRED_CONFIG_KEYS if k not in config]
        if missing:
            raise ValueError(f"safetensors export needs config keys: {', '.join(missing)}")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    batches = _check_batches(example)

    artifacts: list[Artifact] = []
    with _cpu_eval(model) as student:
        for fmt in formats:
            path = out_dir / FILENAMES[fmt]
            try:
                with _quiet():
                    _WRITERS[fmt](student, batches[0], path, config)
            except Exception as exc:
                raise ExportError(f"{fmt}: export failed: {exc}") from exc
            try:
                with _quiet():
                    runner = _LOADERS[fmt](path)
                    diff = _max_abs_diff(runner, student, batches, fmt)
            except ExportError:
                raise
            except Exception as exc:
                raise ExportError(f"{fmt}: the exported file failed to load or run: {exc}") from exc
            if not diff <= TOLERANCE:  # also catches NaN
                raise ExportError(
                    f"{fmt}: reloaded outputs differ from the eager student by {diff:.3g} "
                    f"(tolerance {TOLERANCE:g})"
                )
            artifacts.append(
                Artifact(
                    format=fmt,
                    path=path,
                    sha256=sha256_file(path),
                    size_bytes=path.stat().st_size,
                    max_abs_diff=diff,
                )
            )
    return artifacts
