"""Load teachers (and student weights) from files, failing before training with a useful error.

A teacher comes as an architecture plus a state dict, a TorchScript file, or an ONNX file run
with onnxruntime. Every failure a user can cause (a missing file, a file that is not a model,
a pickle with arbitrary objects, a state dict for another architecture, a head with the wrong
number of classes) becomes a `ModelLoadError` that names the spec field and says how to fix it,
raised by `load_teacher` before any training starts. State dicts are read with
`torch.load(weights_only=True)` only: an uploaded file is never unpickled freely.
"""

from __future__ import annotations

import math
import pickle
import re
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from kdcore.errors import InputError
from kdcore.models.outputs import with_logits
from kdcore.models.registry import build_model
from kdcore.spec import TeacherSpec

_MAX_KEYS_SHOWN = 3


class ModelLoadError(InputError):
    """A model file the user gave cannot be used; `field` is the spec path (e.g. teacher.onnx)."""


def _short(exc: BaseException, limit: int = 200) -> str:
    """The gist of a library exception: its type and first sentence; some run to pages."""
    lines = str(exc).strip().splitlines()
    text = lines[0].strip() if lines else ""
    if len(text) > limit and ". " in text[20:]:
        text = text[: text.index(". ", 20) + 1]
    if len(text) > limit:
        text = text[: limit - 3] + "..."
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def _existing_file(path: str | Path, field: str) -> Path:
    p = Path(path)
    if not p.is_file():
        what = "is a directory" if p.is_dir() else "does not exist"
        raise ModelLoadError(field, f"{p} {what}; give the path of a model file")
    return p


def _as_state_dict(obj: Any) -> dict[str, Tensor] | None:
    """The tensor mapping inside `obj` (plain, or under "state_dict"/"model"), else None."""
    if isinstance(obj, Mapping) and not all(isinstance(v, Tensor) for v in obj.values()):
        for key in ("state_dict", "model"):
            if isinstance(obj.get(key), Mapping):
                return _as_state_dict(obj[key])
        return None
    if not isinstance(obj, Mapping) or not obj:
        return None
    if not all(isinstance(k, str) for k in obj):
        return None
    sd = dict(obj)
    # Checkpoints saved from DataParallel/DDP wrap every key in "module.".
    if all(k.startswith("module.") for k in sd):
        sd = {k.removeprefix("module."): v for k, v in sd.items()}
    return sd


def _sibling(field: str, key: str) -> str:
    """The spec path next to `field`: ("teacher.checkpoint", "onnx") → "teacher.onnx"."""
    parent = field.rpartition(".")[0] or "teacher"
    return f"{parent}.{key}"


def _hint(p: Path, field: str) -> str:
    """Point an ONNX file given as a checkpoint to the right field."""
    onnx_field = _sibling(field, "onnx")
    return f"; an ONNX model goes in {onnx_field}" if p.suffix.lower() == ".onnx" else ""


def _looks_like_safetensors(p: Path) -> bool:
    """safetensors starts with an 8-byte header length and a JSON header; sniff it."""
    try:
        with p.open("rb") as f:
            head = f.read(9)
    except OSError:
        return False
    if len(head) < 9:
        return False
    return head[8:9] == b"{" and 0 < int.from_bytes(head[:8], "little") < p.stat().st_size


# What torch's weights-only refusals name, in the wordings it has used: "Unsupported global:
# GLOBAL a.B was not an allowed global", "Trying to load unsupported GLOBAL os.system whose
# module os is blocked", "... but got <class 'a.B'>", "unrecognized function a.f".
_REFUSED_NAME = re.compile(r"GLOBAL (\S+)|got <class '([^']+)'>|unrecognized function (\S+)")


def _pickled_objects(p: Path, exc: pickle.UnpicklingError) -> str:
    """Why weights-only loading refused `p`, whatever torch's wording: the file is more than
    tensors in plain containers (or no torch.save file at all), and how to save one that is."""
    found = _REFUSED_NAME.search(str(exc))
    name = next((g for g in found.groups() if g), "") if found else ""
    what = (
        f"holds a pickled Python object ({name.rstrip('.,;')})"
        if name
        else "holds pickled Python objects, or is not a torch.save file at all"
    )
    return (
        f"{p.name} {what}; model files are only ever loaded as weights (tensors in plain "
        "dicts and lists), arbitrary objects are never unpickled here, so save only the "
        "tensors: torch.save(model.state_dict(), path), or safetensors.torch.save_file("
        "model.state_dict(), path); a checkpoint that also keeps other things (training "
        "arguments, optimizer objects) needs its state dict saved alone"
    )


def load_state_dict_file(path: str | Path, field: str = "checkpoint") -> dict[str, Tensor]:
    """Read a state dict from .safetensors or a torch.save file (weights_only=True, never pickle).

    Accepts a plain state dict or a dict holding one under "state_dict" or "model"
    (the layout of most training scripts, e.g. RepDistiller's teachers).
    """
    p = _existing_file(path, field)
    if p.suffix == ".safetensors" or _looks_like_safetensors(p):
        from safetensors.torch import load_file

        try:
            return load_file(str(p), device="cpu")
        except Exception as exc:
            raise ModelLoadError(
                field, f"{p.name} is not a readable safetensors file ({_short(exc)})"
            ) from None
    try:
        with warnings.catch_warnings():
            # torch warns before refusing a TorchScript archive; the error below says more.
            warnings.filterwarnings("ignore", message=".*TorchScript archive")
            obj = torch.load(p, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        raise ModelLoadError(field, _pickled_objects(p, exc) + _hint(p, field)) from None
    except Exception as exc:
        if "TorchScript" in str(exc):
            raise ModelLoadError(
                field,
                f"{p.name} is a TorchScript model, not a state dict; give it as "
                f"{_sibling(field, 'torchscript')} (without arch/kwargs)",
            ) from None
        raise ModelLoadError(
            field,
            f"{p.name} is not a state dict saved with torch.save or safetensors "
            f"({_short(exc)}){_hint(p, field)}",
        ) from None
    sd = _as_state_dict(obj)
    if sd is None:
        raise ModelLoadError(
            field,
            f"{p.name} holds a {type(obj).__name__}, not a state dict (a mapping of parameter "
            "names to tensors); save model.state_dict()",
        )
    return sd


def _names(keys: Sequence[str]) -> str:
    shown = ", ".join(keys[:_MAX_KEYS_SHOWN])
    more = len(keys) - _MAX_KEYS_SHOWN
    return shown + (f" (+{more} more)" if more > 0 else "")


def load_weights(
    model: nn.Module, state_dict: Mapping[str, Tensor], field: str, what: str = "the model"
) -> nn.Module:
    """Strictly load `state_dict` into `model`, explaining a mismatch in one short message."""
    own = model.state_dict()
    missing = [k for k in own if k not in state_dict]
    unexpected = [k for k in state_dict if k not in own]
    wrong_shape = [
        f"{k} {tuple(state_dict[k].shape)} in file vs {tuple(v.shape)} in model"
        for k, v in own.items()
        if k in state_dict and tuple(state_dict[k].shape) != tuple(v.shape)
    ]
    problems = []
    if missing:
        problems.append(f"missing keys: {_names(missing)}")
    if unexpected:
        problems.append(f"unexpected keys: {_names(unexpected)}")
    if wrong_shape:
        problems.append(f"shape mismatch: {_names(wrong_shape)}")
    if problems:
        raise ModelLoadError(
            field,
            f"the state dict does not fit {what}: {'; '.join(problems)}; "
            "check that arch and kwargs match the ones the checkpoint was trained with",
        )
    try:
        model.load_state_dict(dict(state_dict), strict=True)
    except RuntimeError as exc:  # e.g. a dtype that cannot be copied
        raise ModelLoadError(field, f"cannot load the state dict: {_short(exc)}") from None
    return model


_ORT_TO_NUMPY = {
    "tensor(float)": np.float32,
    "tensor(double)": np.float64,
    "tensor(float16)": np.float16,
}


class OnnxModel(nn.Module):
    """An ONNX model run by onnxruntime on CPU, usable wherever a frozen teacher nn.Module is.

    Only the first input and the first output are used (logits). It has no parameters and its
    outputs never require grad, so it can only be a frozen teacher. If the file was exported
    with a fixed batch size, inputs are run in chunks of that size (padding the last), so a
    teacher exported with batch 1 still works with any training batch size.
    """

    def __init__(
        self, path: str | Path, threads: int | None = None, output: int | str | None = None
    ):
        super().__init__()
        import onnxruntime as ort

        self.path = str(path)
        self._threads = threads
        options = ort.SessionOptions()
        options.log_severity_level = 3  # errors only; warnings flood worker logs
        if threads:
            options.intra_op_num_threads = threads
        self.session = ort.InferenceSession(
            self.path, sess_options=options, providers=["CPUExecutionProvider"]
        )
        inp, out = self.session.get_inputs()[0], _pick_output(self.session.get_outputs(), output)
        self.input_name, self.output_name = inp.name, out.name
        self.input_dtype = _ORT_TO_NUMPY.get(inp.type, np.float32)
        self.input_dims: list[int | str | None] = list(inp.shape)
        first = self.input_dims[0] if self.input_dims else None
        self.fixed_batch: int | None = first if isinstance(first, int) and first > 0 else None
        self.eval()

    def _run(self, arr: np.ndarray) -> np.ndarray:
        return self.session.run([self.output_name], {self.input_name: arr})[0]

    def forward(self, x: Tensor) -> Tensor:
        # via float32: numpy has no bfloat16, and autocast may hand one in
        arr = x.detach().to("cpu", torch.float32).numpy().astype(self.input_dtype, copy=False)
        b = self.fixed_batch
        if b is None or arr.shape[0] == b:
            out = self._run(arr)
        else:
            chunks = []
            for start in range(0, arr.shape[0], b):
                part = arr[start : start + b]
                n = part.shape[0]
                if n < b:
                    pad = np.zeros((b - n, *part.shape[1:]), dtype=part.dtype)
                    part = np.concatenate([part, pad])
                chunks.append(self._run(part)[:n])
            out = np.concatenate(chunks)
        return torch.from_numpy(np.ascontiguousarray(out, dtype=np.float32)).to(x.device)

    def num_params(self) -> int:
        """Total size of the floating-point initializers (the weights) in the graph."""
        import onnx

        graph = onnx.load(self.path, load_external_data=False).graph
        floats = {
            onnx.TensorProto.FLOAT,
            onnx.TensorProto.DOUBLE,
            onnx.TensorProto.FLOAT16,
            onnx.TensorProto.BFLOAT16,
        }
        return sum(math.prod(t.dims) for t in graph.initializer if t.data_type in floats)

    # An InferenceSession cannot be pickled or deep-copied; rebuild it from the file instead.
    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state.pop("session", None)
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        import onnxruntime as ort

        self.__dict__.update(state)
        options = ort.SessionOptions()
        options.log_severity_level = 3
        if self._threads:
            options.intra_op_num_threads = self._threads
        self.session = ort.InferenceSession(
            self.path, sess_options=options, providers=["CPUExecutionProvider"]
        )


def _pick_output(outputs: Sequence[Any], key: int | str | None) -> Any:
    """The ONNX graph output holding the logits: the first, or the one named/indexed by key."""
    names = [o.name for o in outputs]
    if key is None:
        return outputs[0]
    if isinstance(key, int) and -len(outputs) <= key < len(outputs):
        return outputs[key]
    if isinstance(key, str) and key in names:
        return outputs[names.index(key)]
    raise ModelLoadError(
        "teacher.output", f"{key!r} is not an output of the ONNX graph; its outputs: {names}"
    )


def count_params(model: nn.Module) -> int:
    """Parameter count; for ONNX the initializer sizes, since such a model has no Parameters."""
    if isinstance(model, OnnxModel):
        return model.num_params()
    return sum(p.numel() for p in model.parameters())


def check_output_shape(
    model: nn.Module, input_shape: Sequence[int], num_classes: int, field: str
) -> None:
    """Dry-run a batch of 2 zeros; the output must be (2, num_classes) logits."""
    shape = tuple(int(d) for d in input_shape)
    x = torch.zeros(2, *shape)
    try:
        with torch.no_grad():
            out = model(x)
    except Exception as exc:
        raise ModelLoadError(
            field,
            f"running the model on a batch of inputs shaped (batch, {', '.join(map(str, shape))}) "
            f"failed: {_short(exc)}; the model must take the data's input shape {shape} "
            "with a dynamic batch dimension",
        ) from None
    if not isinstance(out, Tensor):
        raise ModelLoadError(
            field,
            f"the model returns a {type(out).__name__}, not a tensor; it must return the "
            f"logits only, shaped (batch, {num_classes})",
        )
    got = tuple(out.shape)
    if out.dim() != 2:
        raise ModelLoadError(
            field,
            f"the model outputs shape {got} but logits must be 2-D (batch, {num_classes}); "
            "export a model whose forward returns the classifier logits",
        )
    if got[0] != 2:
        raise ModelLoadError(
            field,
            f"the model outputs shape {got} for a batch of 2; export it with a dynamic "
            "batch dimension",
        )
    if got[1] != num_classes:
        raise ModelLoadError(
            field,
            f"the model outputs shape {got} but the data has {num_classes} classes; "
            f"export a teacher with a {num_classes}-way head",
        )


def _check_onnx_input(model: OnnxModel, shape: tuple[int, ...], field: str) -> None:
    """Compare the graph's declared input dims with the data's, for a clearer error than ORT's."""
    dims = model.input_dims[1:]
    fixed_mismatch = any(isinstance(d, int) and d != s for d, s in zip(dims, shape, strict=False))
    if len(dims) != len(shape) or fixed_mismatch:
        shown = ", ".join("?" if not isinstance(d, int) else str(d) for d in model.input_dims)
        raise ModelLoadError(
            field,
            f"the model takes inputs shaped ({shown}) but the data's samples are shaped "
            f"{shape}; export the teacher for inputs shaped (batch, "
            f"{', '.join(map(str, shape))})",
        )


def _freeze(model: nn.Module) -> nn.Module:
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return model


def load_teacher(
    spec: TeacherSpec, input_shape: Sequence[int], num_classes: int, field: str = "teacher"
) -> nn.Module:
    """Build or load the teacher named by `spec`, frozen (eval mode, no grads) and checked.

    `field` prefixes error locations (e.g. "teacher" → "teacher.onnx"), so the same function
    serves extra teachers in multi-teacher schemes ("teachers.1").
    """
    source = spec.source
    if source == "train":
        raise ValueError(
            f"{field}.train: a teacher trained inside the job is built by the trainer, "
            "not loaded from a file"
        )
    loc = f"{field}.{source}"
    shape = tuple(int(d) for d in input_shape)
    model: nn.Module
    if source == "checkpoint":
        assert spec.arch is not None and spec.checkpoint is not None  # TeacherSpec guarantees
        try:
            model = build_model(spec.arch, shape, num_classes, **spec.kwargs)
        except KeyError as exc:
            raise ModelLoadError(f"{field}.arch", str(exc.args[0])) from None
        except ValueError as exc:
            raise ModelLoadError(f"{field}.kwargs", str(exc)) from None
        sd = load_state_dict_file(spec.checkpoint, loc)
        load_weights(
            model, sd, loc, what=f"{spec.arch} for input {shape} and {num_classes} classes"
        )
    elif source == "torchscript":
        assert spec.torchscript is not None
        p = _existing_file(spec.torchscript, loc)
        try:
            model = torch.jit.load(str(p), map_location="cpu")
        except Exception as exc:
            raise ModelLoadError(
                loc,
                f"{p.name} is not a TorchScript model ({_short(exc)}); save one with "
                "torch.jit.save(torch.jit.trace(model, example), path), or give a state "
                f"dict as {field}.checkpoint with {field}.arch",
            ) from None
    else:
        assert spec.onnx is not None
        p = _existing_file(spec.onnx, loc)
        try:
            model = OnnxModel(p, output=spec.output)
        except ModelLoadError as exc:
            raise ModelLoadError(f"{field}.output", exc.message) from None
        except Exception as exc:
            raise ModelLoadError(
                loc,
                f"{p.name} is not a valid ONNX model ({_short(exc)}); export one with "
                "torch.onnx.export(model, example, path, dynamic_axes={...})",
            ) from None
        _check_onnx_input(model, shape, loc)
    _freeze(model)
    if source != "onnx":
        try:
            model = with_logits(model, spec.output, f"{field}.output", torch.zeros(2, *shape))
        except InputError:
            raise
        except Exception:
            pass  # the model cannot run on the data's shape: check_output_shape says so below
    check_output_shape(model, shape, num_classes, loc)
    return model
