"""A blob store on a local folder.

Uploads and artifacts are content-addressed by sha256 (the same file is stored once, and a key
names its content, so a retried job writing its artifacts again changes nothing). Checkpoints are
named blobs (`checkpoints/<job>/<stage>`), replaced atomically each epoch.

Deleting is for store/retention.py, which knows which rows name a blob: `delete` removes a blob
only if it was not written (or written again: `_place` touches an existing blob) since a given
time, so the bytes of an upload or a job's export still on their way to a database row survive.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import tempfile
import uuid
from collections.abc import Iterable, Iterator
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
        try:
            # already stored: mark it as just written, so that `delete` (a GC pass, a deleted
            # row sharing these bytes) leaves it alone until this writer's row exists
            os.utime(final)
            return
        except FileNotFoundError:
            pass
        final.parent.mkdir(parents=True, exist_ok=True)
        os.replace(tmp, final)

    def delete(self, sha256: str, written_before: float) -> int | None:
        """Delete a blob last written before `written_before` (a POSIX time); its size, or None
        when it is missing or newer. The blob is first renamed away, then its time is read
        again: a writer that touched it before the rename is seen (and the blob put back), one
        after it finds no blob and stores its own copy."""
        final = self.path(sha256)
        try:
            if final.stat().st_mtime >= written_before:
                return None
            trash = self.root / "tmp" / f"deleting-{sha256}-{uuid.uuid4().hex[:8]}"
            os.replace(final, trash)
        except FileNotFoundError:
            return None
        st = trash.stat()
        if st.st_mtime >= written_before:  # written again between our two looks: keep it
            with contextlib.suppress(FileExistsError):  # a writer stored a copy meanwhile
                os.link(trash, final)
            trash.unlink()
            return None
        trash.unlink()
        return st.st_size

    def blobs(self) -> Iterator[tuple[str, os.stat_result]]:
        """(sha256, stat) of every stored blob, in no particular order."""
        for folder in (self.root / "sha256").iterdir():
            if not folder.is_dir():
                continue
            for path in folder.iterdir():
                try:
                    yield path.name, path.stat()
                except FileNotFoundError:  # deleted while we looked
                    continue

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
