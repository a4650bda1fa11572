"""Zhang, Xiang, Hospedales & Lu (2018), "Deep Mutual Learning" (CVPR): K peers trained together,
each learning from the labels and from every other peer.

    L = Σ_k [ CE(z_k, y) + 1/(K − 1) · Σ_{l≠k} KL(σ(sg z_l) ‖ σ(z_k)) ]      (T = 1)

`sg` stops the gradient: peer l is a fixed target in peer k's term (and learns from peer k in its
own). One backward of the sum trains every peer, as the paper's alternating updates do in
expectation. CE uses the labelled rows only, the KL terms every row. K = 1 is plain CE.

The peers live in a `kdcore.schemes.mutual.PeerGroup` (the pipeline builds it for this method);
forward hooks on `peers.0` .. `peers.K-1` hand each peer's logits to this method. No teacher is
consulted (`needs_teacher` is False).
"""

from __future__ import annotations

from typing import ClassVar, Literal

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import Tensor

from kdcore.methods._common import as_float
from kdcore.methods.base import Method, MethodParams, StepOutputs, masked_cross_entropy
from kdcore.methods.registry import register


class DMLParams(MethodParams):
    peers: int = Field(
        2, ge=1, le=16, description="K, peers of the student's architecture trained together"
    )
    export: Literal["best"] | int = Field(
        "best",
        description="the peer exported: 'best' (highest validation accuracy) or a peer index",
    )

    def model_post_init(self, _context: object) -> None:
        if isinstance(self.export, int) and not 0 <= self.export < self.peers:
            from kdcore.methods._common import field_error

            raise field_error(
                "DMLParams",
                ("export",),
                f"{self.export} is not a peer index (0..{self.peers - 1}); or use 'best'",
                self.export,
            )


def mutual_loss(logits: list[Tensor], targets: Tensor) -> Tensor:
    """The DML loss summed over the peers' logits (each (B, C))."""
    k_peers = len(logits)
    total: Tensor | None = None
    log_p = [F.log_softmax(as_float(z), dim=1) for z in logits]
    for k, z in enumerate(logits):
        loss = masked_cross_entropy(z, targets)
        for j in range(k_peers):
            if j != k:
                kl = F.kl_div(log_p[k], log_p[j].detach(), reduction="batchmean", log_target=True)
                loss = loss + kl / (k_peers - 1)
        total = loss if total is None else total + loss
    assert total is not None
    return total


@register("dml")
class DeepMutualLearning(Method):
    params: ClassVar[type[MethodParams]] = DMLParams
    needs_teacher: ClassVar[bool] = False
    scheme: ClassVar[str] = "dml"
    hparams: DMLParams

    def student_layers(self) -> list[str]:
        return [f"peers.{k}" for k in range(self.hparams.peers)]

    def forward(self, out: StepOutputs) -> Tensor:
        with torch.autocast(out.student_logits.device.type, enabled=False):
            logits = [out.student_features[name] for name in self.student_layers()]
            return mutual_loss(logits, out.targets)
