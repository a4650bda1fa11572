"""The content-addressed blob store."""

import hashlib
from pathlib import Path

import pytest

from store.blobs import BlobStore, TooLarge


def test_put_is_content_addressed_and_deduplicated(tmp_path: Path) -> None:
    blobs = BlobStore(tmp_path)
    data = b"x" * 3_000_000
    sha, size = blobs.put_stream([data[:1000], data[1000:]])
    assert sha == hashlib.sha256(data).hexdigest() and size == len(data)
    assert blobs.path(sha).read_bytes() == data
    again, _ = blobs.put_stream([data])
    assert again == sha
    assert len(list((tmp_path / "sha256").rglob("*"))) == 2  # one folder, one file
    assert list((tmp_path / "tmp").iterdir()) == []


def test_limit_refuses_and_leaves_nothing(tmp_path: Path) -> None:
    blobs = BlobStore(tmp_path)
    with pytest.raises(TooLarge):
        blobs.put_stream([b"a" * 600, b"b" * 600], limit=1000)
    assert list((tmp_path / "sha256").rglob("*")) == []
    assert list((tmp_path / "tmp").iterdir()) == []


def test_keys_cannot_escape_the_store(tmp_path: Path) -> None:
    blobs = BlobStore(tmp_path)
    for bad in ("../etc/passwd", "ab", "Z" * 64):
        with pytest.raises(ValueError):
            blobs.path(bad)
    with pytest.raises(ValueError):
        blobs.named_path("../outside")


def test_named_blobs_replace_atomically(tmp_path: Path) -> None:
    blobs = BlobStore(tmp_path / "store")
    src = tmp_path / "f"
    src.write_bytes(b"one")
    blobs.put_named("checkpoints/j1/distill", src)
    src.write_bytes(b"two")
    blobs.put_named("checkpoints/j1/distill", src)
    assert blobs.named_path("checkpoints/j1/distill").read_bytes() == b"two"
    blobs.delete_named_prefix("checkpoints/j1")
    assert not blobs.named_path("checkpoints/j1/distill").exists()
