"""Online distillation by deep mutual learning (`method: dml`): K peers of the student's
architecture, trained together in the `distill` stage, then the best peer (or the one named by
`method.export`) is the job's student.

`PeerGroup` holds the peers as `peers.0` .. `peers.K-1`; its forward runs every peer (so the
method's hooks see each peer's logits) and returns the exported peer's logits, so the training
loop's per-epoch accuracy, checkpoints and resumes treat the group as one model. Peer k is built
like the student (`student.kwargs`, `student.checkpoint`, `student.output`) with seed
`train.seed + k`: peer 0 is initialised exactly as the plain student (and the baseline).
"""

from __future__ import annotations

import dataclasses

from torch import Tensor, nn

from kdcore import evaluate
from kdcore.data.dataset import Dataset
from kdcore.errors import InputError
from kdcore.methods.base import Method
from kdcore.methods.dml import DeepMutualLearning
from kdcore.spec import JobSpec


class PeerGroup(nn.Module):
    """K peers; forward runs them all and returns peer `lead`'s logits."""

    def __init__(self, peers: list[nn.Module], lead: int = 0):
        super().__init__()
        self.peers = nn.ModuleList(peers)
        self.lead = lead

    def forward(self, x: Tensor) -> Tensor:
        outputs = [peer(x) for peer in self.peers]
        return outputs[self.lead]


def is_mutual(method: Method) -> bool:
    return isinstance(method, DeepMutualLearning)


def check_spec(spec: JobSpec, method: Method) -> None:
    """DML trains its own peers; it is not a link of a teacher-assistant chain nor a generation."""
    if not is_mutual(method):
        return
    if spec.assistants:
        raise InputError("assistants", "method dml trains peers, not a chain; remove assistants")
    if spec.generations > 1:
        raise InputError("generations", "method dml trains peers, not generations; use 1")


def build_group(spec: JobSpec, data: Dataset, method: Method) -> PeerGroup:
    from kdcore.pipeline import build_student  # the pipeline imports this module

    assert isinstance(method, DeepMutualLearning)
    p = method.hparams
    peers = []
    for k in range(p.peers):
        train = spec.train.model_copy(update={"seed": spec.train.seed + k})
        peers.append(build_student(spec.model_copy(update={"train": train}), data))
    return PeerGroup(peers, p.export if isinstance(p.export, int) else 0)


@dataclasses.dataclass
class Chosen:
    model: nn.Module
    index: int
    accuracies: list[float]

    def report_section(self) -> dict:
        return {
            "count": len(self.accuracies),
            "exported": self.index,
            "accuracies": [round(a, 4) for a in self.accuracies],
        }


def choose_peer(group: PeerGroup, data: Dataset, method: Method) -> Chosen:
    """The peer to export: `method.export`, or the best on the validation split (the first
    among equals)."""
    assert isinstance(method, DeepMutualLearning)
    accuracies = [evaluate.accuracy(peer.cpu(), data.x_val, data.y_val) for peer in group.peers]
    export = method.hparams.export
    index = export if isinstance(export, int) else accuracies.index(max(accuracies))
    return Chosen(group.peers[index], index, accuracies)
