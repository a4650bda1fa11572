"""The in-memory dataset every source produces, and the error a bad data source raises.

Everything the engine trains on is small enough to sit in memory as tensors; the training loop
batches it itself with a seeded permutation, so there is no DataLoader in between.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from kdcore.errors import InputError


class DataError(InputError):
    """A data source the engine cannot use; `field` is the spec path at fault (e.g.
    ``data.source``) and the message says how to fix it. Subclasses `InputError` so the CLI
    and the API report it as a user error (exit 2 / 4xx) rather than a crash."""


@dataclass
class Dataset:
    """Train and validation tensors of one job.

    `y_train` holds -1 for rows without a label (a transfer set: the student learns those
    from the teacher alone); `y_val` is always fully labelled, because accuracy is measured
    on it. `normalization` records the statistics already applied to both splits, so that
    serving code can standardise new inputs the same way (see `apply_normalization`).
    """

    x_train: Tensor
    y_train: Tensor
    x_val: Tensor
    y_val: Tensor
    num_classes: int
    input_shape: tuple[int, ...]
    normalization: dict[str, list[float]] | None
    name: str
    # Training labels before `labeled_fraction` hid some from the student (None when it hid
    # none). A teacher trained in the job learns from these: it stands for a teacher trained on
    # the fully labelled set, while the student sees only the kept labels.
    y_train_all: Tensor | None = None

    @property
    def labeled_mask(self) -> Tensor:
        """True for training rows that carry a label."""
        return self.y_train >= 0

    @property
    def n_labeled(self) -> int:
        return int(self.labeled_mask.sum().item())

    def summary(self) -> dict[str, Any]:
        """A JSON-friendly description for logs and job records."""
        return {
            "name": self.name,
            "n_train": len(self.x_train),
            "n_labeled": self.n_labeled,
            "n_val": len(self.x_val),
            "num_classes": self.num_classes,
            "input_shape": list(self.input_shape),
            "normalized": self.normalization is not None,
        }


def stats_shape(input_shape: tuple[int, ...]) -> tuple[int, ...]:
    """Broadcast shape of per-channel (or, for flat data, per-feature) statistics."""
    return (input_shape[0],) + (1,) * (len(input_shape) - 1)


def apply_normalization(x: Tensor, normalization: dict[str, list[float]] | None) -> Tensor:
    """Standardise a batch `x` of shape (N, *input_shape) with recorded statistics, so that
    inputs seen after training go through exactly what the training data went through."""
    if normalization is None:
        return x
    shape = stats_shape(tuple(x.shape[1:]))
    mean = torch.tensor(normalization["mean"], dtype=x.dtype, device=x.device).view(shape)
    std = torch.tensor(normalization["std"], dtype=x.dtype, device=x.device).view(shape)
    return (x - mean) / std
