"""A teacher that receives the inputs it was trained on.

`data.normalize` standardises both splits once, when the data is loaded, so everything the job
trains sees standardised inputs. A teacher brought as a file was trained on its own inputs,
usually the data as the file holds it: `RawInputs` wraps it so that its forward first undoes the
data's standardisation (x · std + mean, with the statistics the dataset recorded), and the
training loop, the teacher cache, feature hooks and evaluation all feed it what it expects
(`teacher.inputs`, default `raw` for files).

The wrapper is transparent where names and sizes matter, like `LogitsOutput`: its state dict is
the inner model's, feature hooks go to the inner model's modules (`feature_model`, see
`models.outputs.hook_target`), and its parameter count and size are the inner model's.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from kdcore import evaluate
from kdcore.data.dataset import stats_shape


class RawInputs(nn.Module):
    """`model` fed un-normalised inputs: forward(x) = model(x · std + mean)."""

    def __init__(
        self, model: nn.Module, normalization: dict[str, list[float]], input_shape: tuple[int, ...]
    ):
        super().__init__()
        self.inner = model
        shape = (1, *stats_shape(tuple(input_shape)))
        mean = torch.tensor(normalization["mean"], dtype=torch.float32).view(shape)
        std = torch.tensor(normalization["std"], dtype=torch.float32).view(shape)
        # not persistent: the state dict stays the teacher's own
        self.register_buffer("mean", mean, persistent=False)
        self.register_buffer("std", std, persistent=False)

    @property
    def feature_model(self) -> nn.Module:
        """The teacher whose modules feature methods hook (by its own layer names)."""
        return self.inner

    def forward(self, x: Tensor) -> Tensor:
        mean: Tensor = self.mean  # type: ignore[assignment]
        std: Tensor = self.std  # type: ignore[assignment]
        return self.inner(x * std.to(x.dtype) + mean.to(x.dtype))

    def num_params(self) -> int:
        return evaluate.count_params(self.inner)

    def size_bytes(self) -> int:
        return evaluate.size_bytes(self.inner)

    def state_dict(self, *args: Any, **kwargs: Any) -> Any:
        return self.inner.state_dict(*args, **kwargs)

    def load_state_dict(self, *args: Any, **kwargs: Any) -> Any:
        return self.inner.load_state_dict(*args, **kwargs)


def with_inputs(
    model: nn.Module,
    mode: str,
    normalization: dict[str, list[float]] | None,
    input_shape: tuple[int, ...],
) -> nn.Module:
    """`model` wrapped to receive raw inputs when `mode` is raw and the data was normalised."""
    if mode != "raw" or normalization is None:
        return model
    return RawInputs(model, normalization, input_shape)
