"""A blob store on a local folder.

Uploads and artifacts are content-addressed by sha256 (the same file is stored once, and a key
names its content, so a retried job writing its artifacts again changes nothing). Checkpoints are
named blobs (`checkpoints/<job>/<stage>`), replaced atomically each epoch.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
from collections.abc import Iterable
from pathlib import Path
from typing import BinaryIO

CHUNK = 1 << 20


class TooLarge(Exception):
    """The stream passed the size limit; nothing was stored."""


class BlobStore:
    def __init__(self, root: str | Path):
        self.root = Path(root)
        (self.root / "sha256").mkdir(parents=True, exist_ok=True)
        (self.root / "tmp").mkdir(parents=True, exist_ok=True)

    def path(self, sha256: str) -> Path:
        if len(sha256) != 64 or any(c not in "0123456789abcdef" for c in sha256):
            raise ValueError(f"not a sha256 key: {sha256!r}")
        return self.root / "sha256" / sha256[:2] / sha256

    def exists(self, sha256: str) -> bool:
        return self.path(sha256).exists()

    def put_stream(self, chunks: Iterable[bytes], limit: int | None = None) -> tuple[str, int]:
        """Store a stream, hashing as it goes; raise `TooLarge` past `limit` bytes."""
        digest, size = hashlib.sha256(), 0
        fd, tmp = tempfile.mkstemp(dir=self.root / "tmp")
        try:
            with os.fdopen(fd, "wb") as out:
                for chunk in chunks:
                    size += len(chunk)
                    if limit is not None and size > limit:
                        raise TooLarge(f"more than {limit} bytes")
                    digest.update(chunk)
                    out.write(chunk)
            sha = digest.hexdigest()
            self._place(Path(tmp), sha)
            return sha, size
        finally:
            Path(tmp).unlink(missing_ok=True)

    def put_file(self, path: str | Path) -> tuple[str, int]:
        with open(path, "rb") as f:
            return self.put_stream(iter(lambda: f.read(CHUNK), b""))

    def _place(self, tmp: Path, sha: str) -> None:
        final = self.path(sha)
        if final.exists():
            return
        final.parent.mkdir(parents=True, exist_ok=True)
        os.replace(tmp, final)

    def open(self, sha256: str) -> BinaryIO:
        return open(self.path(sha256), "rb")

    # named blobs (checkpoints) -------------------------------------------------------------

    def named_path(self, key: str) -> Path:
        parts = Path(key).parts
        if not parts or any(p in ("..", "") or p.startswith("/") for p in parts):
            raise ValueError(f"bad blob key {key!r}")
        return self.root / "named" / key

    def put_named(self, key: str, src: str | Path) -> None:
        dest = self.named_path(key)
        dest.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=self.root / "tmp")
        os.close(fd)
        shutil.copyfile(src, tmp)
        os.replace(tmp, dest)

    def delete_named_prefix(self, prefix: str) -> None:
        shutil.rmtree(self.named_path(prefix), ignore_errors=True)
