"""Per-epoch checkpoints in the blob store, so a job that comes back after its worker died
(another machine, another container) resumes where the lost attempt stopped.

Keys are `checkpoints/<job id>/<stage>`; `BlobStore.put_named` replaces a key atomically, so a
crash mid-save leaves the previous epoch's checkpoint intact. Loading uses
`torch.load(weights_only=True)`: a checkpoint holds tensors, numbers and lists only.
"""

from __future__ import annotations

import logging
import os
import tempfile
from pathlib import Path
from typing import Any

import torch

from store.blobs import BlobStore

log = logging.getLogger(__name__)


def checkpoint_prefix(job_id: str) -> str:
    return f"checkpoints/{job_id}"


class BlobCheckpoints:
    """A `kdcore.checkpoint.CheckpointStore` over the blob store's named blobs."""

    def __init__(self, blobs: BlobStore, job_id: str):
        self.blobs = blobs
        self.job_id = job_id

    def key(self, stage: str) -> str:
        return f"{checkpoint_prefix(self.job_id)}/{stage}"

    def save(self, stage: str, state: dict[str, Any]) -> None:
        fd, tmp = tempfile.mkstemp(dir=self.blobs.root / "tmp", suffix=".ckpt.pt")
        os.close(fd)
        try:
            torch.save(state, tmp)
            self.blobs.put_named(self.key(stage), tmp)
        finally:
            Path(tmp).unlink(missing_ok=True)

    def load(self, stage: str) -> dict[str, Any] | None:
        path = self.blobs.named_path(self.key(stage))
        if not path.exists():
            return None
        try:
            return torch.load(path, map_location="cpu", weights_only=True)
        except Exception:
            # A damaged checkpoint costs the stage's progress, never the job.
            log.warning("job %s: unreadable checkpoint %s; stage restarts", self.job_id, path)
            return None

    def clear(self) -> None:
        self.blobs.delete_named_prefix(checkpoint_prefix(self.job_id))
