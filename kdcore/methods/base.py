"""What every distillation method sees and must provide.

A method is an `nn.Module` (so any learnable part, such as a FitNets adapter, is optimised and
checkpointed with the student) that turns one step's outputs into a scalar loss.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict
from torch import Tensor, nn


class MethodParams(BaseModel):
    model_config = ConfigDict(extra="forbid")


@dataclass
class StepOutputs:
    """One batch: logits (and, for feature methods, captured features); targets are -1 where the
    row has no label (a transfer set)."""

    student_logits: Tensor
    targets: Tensor
    teacher_logits: Tensor | None = None
    student_features: dict[str, Tensor] = field(default_factory=dict)
    teacher_features: dict[str, Tensor] = field(default_factory=dict)


class Method(nn.Module):
    """Subclasses set `params` (their spec keys) and implement `forward`; feature methods also
    name the layers they need and may build learnable parts (adapters) in `setup`."""

    params: ClassVar[type[MethodParams]] = MethodParams
    needs_teacher: ClassVar[bool] = True
    #: The student scheme that trains with this method (kdcore/schemes): "offline" (a frozen
    #: teacher teaches the student), "self" (no teacher is consulted), or a method's own
    #: ("dml" trains peers, "gpd" a dynamic teacher).
    scheme: ClassVar[str] = "offline"
    #: The method trains a teacher of its own (GPD's dynamic teacher): when it needs no static
    #: teacher, the spec must give none, and the gap is measured to its own.
    trains_own_teacher: ClassVar[bool] = False

    def __init__(self, params: MethodParams):
        super().__init__()
        self.hparams = params
        # The width of the student's logits, set by the trainer from its dry forward before
        # `setup` (None until then), for methods that build classifier heads (byot).
        self.num_classes: int | None = None
        self.epoch = 1
        self.epochs = 1

    def student_layers(self) -> list[str]:
        """Student modules whose outputs `forward` needs in `out.student_features`."""
        return []

    def teacher_layers(self) -> list[str]:
        """Teacher modules whose outputs `forward` needs in `out.teacher_features`."""
        return []

    def setup(
        self, student_features: dict[str, Tensor], teacher_features: dict[str, Tensor]
    ) -> None:
        """Called once before training with the features of a dry forward pass, so a method
        can size its learnable parts (e.g. a FitNets regressor) to the real shapes."""

    def start_epoch(self, epoch: int, epochs: int) -> None:
        """1-based epoch about to run (for warm-ups such as DKD's)."""
        self.epoch, self.epochs = epoch, epochs

    def forward(self, out: StepOutputs) -> Tensor:  # pragma: no cover - abstract
        raise NotImplementedError


def masked_cross_entropy(logits: Tensor, targets: Tensor) -> Tensor:
    """Mean CE over the labelled rows only (targets == -1 are skipped); 0 when none is labelled."""
    labelled = (targets >= 0).sum().clamp(min=1)
    total = F.cross_entropy(logits.float(), targets, ignore_index=-1, reduction="sum")
    return total / labelled


def zero_like(t: Tensor) -> Tensor:
    return torch.zeros((), dtype=torch.float32, device=t.device)
