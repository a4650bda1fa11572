"""Where the training loop keeps its per-epoch checkpoints.

The loop only needs `save(stage, state)` and `load(stage)`; the CLI uses a local folder, the
worker a blob store. Checkpoints hold tensors, numbers and lists only, so they load back with
`torch.load(weights_only=True)`.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Protocol

import torch


class CheckpointStore(Protocol):
    def save(self, stage: str, state: dict[str, Any]) -> None: ...

    def load(self, stage: str) -> dict[str, Any] | None: ...


class FolderCheckpoints:
    """One file per stage in a folder, replaced atomically so a crash never leaves half a file."""

    def __init__(self, folder: str | Path):
        self.folder = Path(folder)

    def path(self, stage: str) -> Path:
        return self.folder / f"{stage}.ckpt.pt"

    def save(self, stage: str, state: dict[str, Any]) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        tmp = self.path(stage).with_suffix(".tmp")
        torch.save(state, tmp)
        os.replace(tmp, self.path(stage))

    def load(self, stage: str) -> dict[str, Any] | None:
        path = self.path(stage)
        if not path.exists():
            return None
        return torch.load(path, map_location="cpu", weights_only=True)
