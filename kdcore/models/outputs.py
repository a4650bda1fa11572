"""Models whose forward returns more than the logits: a tuple, a dict, or an object with a
`logits` attribute (e.g. a Hugging Face `ModelOutput`).

The spec's `output` key (`teacher.output`, `student.output`) names where the logits are: an
index into a tuple/list, or a key of a dict / an attribute name. Left out, the logits are the
output itself when it is a tensor, else its first element (tuple/list), its `logits` key (dict)
or its `.logits` attribute. `with_logits` wraps such a model in `LogitsOutput`, whose forward
returns the tensor alone, so the training loop, evaluation and every export see plain logits.

The wrapper is transparent where names matter: its `state_dict`/`load_state_dict` are the
inner model's (checkpoints and safetensors keep the architecture's own keys) and feature hooks
are placed on the inner model's modules (`hook_target`), so layer names do not change.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor, nn

from kdcore.errors import InputError

OutputKey = int | str | None


def _describe(out: Any) -> str:
    if isinstance(out, Tensor):
        return f"a tensor {tuple(out.shape)}"
    if isinstance(out, tuple | list):
        parts = ", ".join(f"{i}: {_describe_short(v)}" for i, v in enumerate(out))
        return f"a {type(out).__name__} of {len(out)} ({parts})"
    if isinstance(out, Mapping):
        parts = ", ".join(f"{k!r}: {_describe_short(v)}" for k, v in out.items())
        return f"a dict with keys {parts}"
    return f"a {type(out).__name__}"


def _describe_short(v: Any) -> str:
    return f"tensor {tuple(v.shape)}" if isinstance(v, Tensor) else type(v).__name__


def select_logits(out: Any, key: OutputKey, field: str = "output") -> Tensor:
    """The logits tensor inside a model's output `out`, chosen by `key` (see the module doc);
    an `InputError` at `field` that lists what the output holds when it cannot be found."""
    found: Any = None
    if key is None:
        if isinstance(out, Tensor):
            return out
        if isinstance(out, tuple | list) and out:
            found = out[0]
        elif isinstance(out, Mapping):
            found = out.get("logits")
        else:
            found = getattr(out, "logits", None)
    elif isinstance(key, int) and not isinstance(key, bool):
        if isinstance(out, tuple | list) and -len(out) <= key < len(out):
            found = out[key]
    elif isinstance(out, Mapping):
        found = out.get(key)
    elif isinstance(key, str):
        found = getattr(out, key, None)
    if not isinstance(found, Tensor):
        hint = (
            "name the logits with an index (tuple/list) or a key/attribute name (dict/object)"
            if key is None
            else f"{key!r} does not select a tensor there"
        )
        raise InputError(field, f"the model's forward returns {_describe(out)}; {hint}")
    return found


class LogitsOutput(nn.Module):
    """`model` whose forward returns only the logits selected by `key`."""

    def __init__(self, model: nn.Module, key: OutputKey = None, field: str = "output"):
        super().__init__()
        self.inner = model
        self.key = key
        self.field = field

    def forward(self, x: Tensor) -> Tensor:
        return select_logits(self.inner(x), self.key, self.field)

    # The architecture's own keys, so checkpoints and exported weights do not change.
    def state_dict(self, *args: Any, **kwargs: Any) -> Any:
        return self.inner.state_dict(*args, **kwargs)

    def load_state_dict(self, *args: Any, **kwargs: Any) -> Any:
        return self.inner.load_state_dict(*args, **kwargs)


def hook_target(model: nn.Module) -> nn.Module:
    """The module whose submodules carry the user-facing layer names (unwraps `LogitsOutput`
    and anything else that exposes the model it delegates to as `feature_model`)."""
    while True:
        if isinstance(model, LogitsOutput):
            model = model.inner
        elif isinstance(inner := getattr(model, "feature_model", None), nn.Module):
            model = inner
        else:
            return model


def unwrap(model: nn.Module) -> nn.Module:
    """The model inside any `LogitsOutput` wrappers."""
    while isinstance(model, LogitsOutput):
        model = model.inner
    return model


def with_logits(
    model: nn.Module, key: OutputKey, field: str, example: Tensor | None = None
) -> nn.Module:
    """`model` itself when it already returns a tensor (and no `key` is given), else wrapped.

    With `key` None, one dry forward of `example` (eval mode, no gradients: no state changes)
    tells whether wrapping is needed; a missing or wrong key fails here, before training.
    """
    if key is None and example is None:
        return model
    out = _dry_run(model, example) if example is not None else None
    if key is None and isinstance(out, Tensor):
        return model
    if out is not None:
        select_logits(out, key, field)  # fail now, with the listing, rather than mid-training
    return LogitsOutput(model, key, field)


@torch.no_grad()
def _dry_run(model: nn.Module, example: Tensor) -> Any:
    modes = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        return model(example)
    finally:
        for m, training in modes:
            m.training = training
