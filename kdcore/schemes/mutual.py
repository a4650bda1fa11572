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

from typing import Any, ClassVar

from torch import Tensor, nn

from kdcore import evaluate
from kdcore.build import build_student
from kdcore.methods.dml import DMLParams
from kdcore.schemes.base import FieldErrors, JobState, StudentScheme, register
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


@register("dml")
class MutualLearning(StudentScheme):
    name: ClassVar[str] = "dml"

    def validate(self, spec: JobSpec) -> FieldErrors:
        """DML trains its own peers; it is not a link of a teacher-assistant chain nor a
        generation."""
        errors: FieldErrors = []
        if spec.assistants:
            errors.append(("assistants", "method dml trains peers, not a chain; remove assistants"))
        if spec.generations > 1:
            errors.append(("generations", "method dml trains peers, not generations; use 1"))
        return errors

    def build_trainee(self, job: JobState) -> PeerGroup:
        spec, p = job.spec, self.params(job.spec)
        peers = []
        for k in range(p.peers):
            train = spec.train.model_copy(update={"seed": spec.train.seed + k})
            peers.append(build_student(spec.model_copy(update={"train": train}), job.data))
        return PeerGroup(peers, p.export if isinstance(p.export, int) else 0)

    def trainee_scale(self, spec: JobSpec) -> int:
        return self.params(spec).peers

    def extract_student(self, job: JobState, trainee: nn.Module) -> nn.Module:
        """The peer to export: `method.export`, or the best on the evaluation split (the first
        among equals)."""
        assert isinstance(trainee, PeerGroup)
        data = job.data
        accuracies = [
            evaluate.accuracy(peer.cpu(), data.x_val, data.y_val) for peer in trainee.peers
        ]
        export = self.params(job.spec).export
        index = export if isinstance(export, int) else accuracies.index(max(accuracies))
        job.scratch[self.name] = {
            "count": len(accuracies),
            "exported": index,
            "accuracies": [round(a, 4) for a in accuracies],
        }
        return trainee.peers[index]

    def report(self, job: JobState) -> dict[str, Any]:
        return {"peers": job.scratch[self.name]}

    @staticmethod
    def params(spec: JobSpec) -> DMLParams:
        p = spec.method.params()
        assert isinstance(p, DMLParams)
        return p
