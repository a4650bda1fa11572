"""The hard strategy (gpd.md §2): one parameter set, the DT's; the student is its first slice.

`SharedPair` holds the DT (every trainable parameter) and the student's own BatchNorm
statistics. `student_forward` runs the student's architecture on tensors cut out of the DT's
parameters (`factor · leading block`, factors from `expansion`), so the student loss's gradient
lands on the shared slice and nowhere else, and both losses' gradients add there. `extract`
copies those same tensors into a plain student module of the original architecture (same
state-dict keys and shapes), which exports like any other student.

The student module given at construction is kept as a template only: its own parameters are
never used again (every tensor is supplied by `torch.func.functional_call`).
"""

from __future__ import annotations

import copy

import torch
from torch import Tensor, nn
from torch.func import functional_call

from kdcore.schemes.gpd.expand import expansion


def cut(dt_tensor: Tensor, shape: torch.Size, factor: float) -> Tensor:
    """The student's tensor: the leading block of `shape`, times `factor` (a differentiable
    view, so gradients flow into the DT's slice only)."""
    block = dt_tensor[tuple(slice(0, n) for n in shape)]
    return block * factor if factor != 1.0 else block


class _Stats(nn.Module):
    """The student's own buffers (BatchNorm running statistics), registered under escaped names
    so they checkpoint and move with the pair."""

    def __init__(self, buffers: dict[str, Tensor]):
        super().__init__()
        self.names = list(buffers)
        for name, t in buffers.items():
            self.register_buffer(self.key(name), t.detach().clone())

    @staticmethod
    def key(name: str) -> str:
        return name.replace(".", "__")

    def tensors(self) -> dict[str, Tensor]:
        return {name: getattr(self, self.key(name)) for name in self.names}


class SharedPair(nn.Module):
    """The dynamic teacher and the student it contains; `forward` is the DT's."""

    def __init__(
        self,
        student: nn.Module,
        ratio: int,
        noise: float = 0.0,
        generator: torch.Generator | None = None,
    ):
        super().__init__()
        exp = expansion(student, ratio, noise, generator)
        self.ratio = ratio
        self.dt = exp.dt
        self.scales = exp.scales
        self.student_stats = _Stats(dict(student.named_buffers()))
        template = copy.deepcopy(student)
        for p in template.parameters():
            p.requires_grad_(False)
        # A tuple hides the template from nn.Module's registration: it is neither trained nor
        # checkpointed (its tensors are always supplied), only its forward and shapes are used.
        self._template: tuple[nn.Module] = (template,)
        self._shapes = {k: p.shape for k, p in template.named_parameters()}
        dt_params = dict(self.dt.named_parameters())
        missing = [k for k in self._shapes if k not in dt_params]
        if missing:
            raise ValueError(f"GPD: the DT lacks the student's parameters {missing}")

    @property
    def template(self) -> nn.Module:
        return self._template[0]

    def train(self, mode: bool = True) -> SharedPair:
        super().train(mode)
        self.template.train(mode)
        return self

    def forward(self, x: Tensor) -> Tensor:
        return self.dt(x)

    def student_tensors(self) -> dict[str, Tensor]:
        """Every parameter and buffer of the student: parameters cut from the DT (attached to
        its graph), buffers the student's own."""
        dt_params = dict(self.dt.named_parameters())
        tensors = {
            k: cut(dt_params[k], shape, self.scales.get(k, 1.0))
            for k, shape in self._shapes.items()
        }
        tensors.update(self.student_stats.tensors())
        return tensors

    def student_forward(self, x: Tensor) -> Tensor:
        """The student as a slice of the DT: gradients reach the DT's shared slice only; in
        train mode its BatchNorm statistics update the student's own buffers."""
        return functional_call(self.template, self.student_tensors(), (x,))

    @torch.no_grad()
    def extract(self) -> nn.Module:
        """A plain student of the original architecture holding the current slice."""
        student = copy.deepcopy(self.template)
        state = {k: t.detach().clone() for k, t in self.student_tensors().items()}
        student.load_state_dict(state, strict=True)
        for p in student.parameters():
            p.requires_grad_(True)
        return student.train(self.training)
