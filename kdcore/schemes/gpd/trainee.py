"""What the training loop trains for `method: gpd`: the shared DT/student pair as one module.

Its forward returns the student's logits (the slice of the DT), so the loop's per-epoch
accuracy, checkpoints and resumes treat it as the student; in train mode it first runs the DT,
whose logits a hook on `pair.dt` hands to the GPD method. With CBR the student is made
multi-branch before the DT is built, and `student()` / `dynamic_teacher()` merge the branches
back into plain layers.
"""

from __future__ import annotations

import copy

import torch
from torch import Tensor, nn

from kdcore.schemes.gpd import cbr
from kdcore.schemes.gpd.shared import SharedPair


class GPDTrainee(nn.Module):
    """The student inside its dynamic teacher; `student()` is the job's student."""

    def __init__(
        self,
        student: nn.Module,
        ratio: int,
        noise: float,
        seed: int,
        branches: cbr.Init | None = None,
    ):
        """`branches`: None (no CBR), "finetune" (branches added around the student's own
        weights, the function unchanged) or "fresh" (a student trained from scratch)."""
        super().__init__()
        self.branched = branches is not None
        if branches is not None:
            torch.manual_seed(seed)
            student = cbr.to_branches(student, init=branches)
        self.pair = SharedPair(student, ratio, noise, torch.Generator().manual_seed(seed))

    def forward(self, x: Tensor) -> Tensor:
        if self.training:
            self.pair.dt(x)  # the method reads these logits through its hook on `pair.dt`
        return self.pair.student_forward(x)

    def student(self) -> nn.Module:
        """The job's student: a plain module of the student's architecture (eval mode)."""
        s = self.pair.extract()
        return (cbr.merge(s) if self.branched else s).eval()

    def dynamic_teacher(self) -> nn.Module:
        """The DT as a standalone model (its branches merged), for evaluation (eval mode)."""
        dt = copy.deepcopy(self.pair.dt)
        return (cbr.merge(dt) if self.branched else dt).eval()
