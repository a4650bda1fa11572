"""Verified, resumable downloads of a student file.

Bytes go to `<dest>.part`; a broken transfer (or one interrupted in an earlier run) continues
from the end of that file with `Range: bytes=<size>-` and `If-Range: <ETag>`, so if the server's
file is not the one the part came from, the server sends the whole new file instead of a range
that would not fit. The ETag is the file's sha256: the finished part is hashed and renamed to
`dest` only when it matches; a mismatch deletes the part (the next try starts over).
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import httpx

from client.errors import ChecksumMismatch, DistilleryError, ServiceUnavailable


@dataclass(frozen=True)
class Download:
    path: Path
    sha256: str
    size_bytes: int
    resumed_from: int = 0  # bytes already on disk (a .part file) when the transfer resumed
    skipped: bool = False  # `path` already held this exact file: nothing was downloaded


def part_path(dest: Path) -> Path:
    return dest.with_name(dest.name + ".part")


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _etag(r: httpx.Response) -> str | None:
    tag = r.headers.get("etag")
    return tag.removeprefix("W/").strip('"') if tag else None


def fetch(
    http: httpx.Client,
    url: str,
    dest: Path,
    sha256: str,
    *,
    on_error: Callable[[httpx.Response], Exception],
    attempts: int = 5,
    backoff_s: float = 0.5,
) -> Download:
    """Download `url` to `dest`, resuming a `.part` file and verifying `sha256` (the ETag)."""
    dest = Path(dest)
    if dest.is_file() and sha256_of(dest) == sha256:
        return Download(dest, sha256, dest.stat().st_size, skipped=True)
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = part_path(dest)
    resumed_from = 0
    for attempt in range(1, attempts + 1):
        offset = part.stat().st_size if part.is_file() else 0
        headers = {"Range": f"bytes={offset}-", "If-Range": f'"{sha256}"'} if offset else {}
        try:
            with http.stream("GET", url, headers=headers) as r:
                if r.status_code == 416:  # the part is as long as the file, or longer: redo
                    part.unlink(missing_ok=True)
                    continue
                if r.status_code not in (200, 206):
                    r.read()
                    raise on_error(r)
                if _etag(r) not in (None, sha256):
                    raise ChecksumMismatch(
                        f"the server now has another file at {url} (ETag {_etag(r)}, expected "
                        f"{sha256}); fetch the job again"
                    )
                if r.status_code == 206 and offset and not resumed_from:
                    resumed_from = offset
                with part.open("ab" if r.status_code == 206 else "wb") as out:
                    for chunk in r.iter_bytes():  # as received: a break loses nothing
                        out.write(chunk)
            break
        except (httpx.TransportError, httpx.StreamError) as exc:  # broken transfer: resume
            if attempt == attempts:
                raise ServiceUnavailable(
                    f"download of {url} kept breaking ({type(exc).__name__}: {exc}); run it "
                    f"again to resume from {part}"
                ) from exc
            time.sleep(backoff_s * attempt)
    else:  # pragma: no cover - only 416 on every attempt
        raise DistilleryError(f"could not download {url}")
    got = sha256_of(part)
    if got != sha256:
        part.unlink(missing_ok=True)
        raise ChecksumMismatch(f"{dest.name}: sha256 {got} does not match the server's {sha256}")
    part.replace(dest)
    return Download(dest, sha256, dest.stat().st_size, resumed_from=resumed_from)
