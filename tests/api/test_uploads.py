"""Uploads: streamed into the blob store, hashed, deduplicated, size-limited."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from typing import Any

from fastapi import FastAPI
from fastapi.testclient import TestClient

from store.settings import Settings


def test_upload_returns_its_hash_and_metadata(client: TestClient, upload_file: Any) -> None:
    content = bytes(range(256)) * 8
    r = upload_file(content, "model", "teacher.onnx")
    assert r.status_code == 201, r.text
    body = r.json()
    assert body["sha256"] == hashlib.sha256(content).hexdigest()
    assert body["size_bytes"] == len(content)
    assert (body["kind"], body["filename"]) == ("model", "teacher.onnx")
    assert body["ref"] == f"upload:{body['id']}"
    assert client.get(f"/v1/uploads/{body['id']}").json() == body


def test_the_stored_blob_is_the_file(app: FastAPI, upload_file: Any) -> None:
    content = b"weights" * 100
    sha = upload_file(content, "model").json()["sha256"]
    assert app.state.blobs.path(sha).read_bytes() == content


def test_same_file_twice_gives_the_same_upload(upload_file: Any) -> None:
    content = b"dedup me" * 50
    first = upload_file(content, "dataset", "a.npz")
    second = upload_file(content, "dataset", "renamed.npz")
    assert (first.status_code, second.status_code) == (201, 200)
    assert second.json() == first.json()
    as_model = upload_file(content, "model", "a.pt")
    assert as_model.status_code == 201 and as_model.json()["id"] != first.json()["id"]


def test_too_large_by_content_length_is_413(
    app: FastAPI, settings: Settings, upload_file: Any
) -> None:
    limit = settings.max_upload_bytes
    r = upload_file(b"x" * (limit + 80 * 1024), "model")
    assert r.status_code == 413
    assert r.json()["limit_bytes"] == limit
    assert str(limit) in r.json()["detail"]
    assert not list((app.state.blobs.root / "tmp").iterdir())


def test_too_large_while_streaming_is_413(
    app: FastAPI, settings: Settings, upload_file: Any
) -> None:
    """Content-Length within the envelope allowance: the stream itself passes the limit."""
    r = upload_file(b"y" * (settings.max_upload_bytes + 1), "model")
    assert r.status_code == 413
    assert not list((app.state.blobs.root / "tmp").iterdir())
    assert not list((app.state.blobs.root / "sha256").iterdir())


def _multipart(parts: list[tuple[str, str | None, bytes]], boundary: str = "b0undary") -> bytes:
    out = b""
    for name, filename, data in parts:
        disposition = f'form-data; name="{name}"'
        if filename is not None:
            disposition += f'; filename="{filename}"'
        out += f"--{boundary}\r\nContent-Disposition: {disposition}\r\n\r\n".encode() + data
        out += b"\r\n"
    return out + f"--{boundary}--\r\n".encode()


def _chunks(body: bytes, size: int = 1000) -> Iterator[bytes]:
    for i in range(0, len(body), size):
        yield body[i : i + size]


def test_chunked_upload_without_length_is_limited_too(
    client: TestClient, settings: Settings
) -> None:
    big = b"z" * (settings.max_upload_bytes * 3)
    body = _multipart([("kind", None, b"model"), ("file", "big.pt", big)])
    r = client.post(
        "/v1/uploads",
        content=_chunks(body),
        headers={"Content-Type": "multipart/form-data; boundary=b0undary"},
    )
    assert r.status_code == 413


def test_kind_may_follow_the_file_and_names_are_cleaned(client: TestClient) -> None:
    body = _multipart([("file", "..\\..\\etc/weights.pt", b"abc" * 10), ("kind", None, b"model")])
    r = client.post(
        "/v1/uploads",
        content=_chunks(body, 7),
        headers={"Content-Type": "multipart/form-data; boundary=b0undary"},
    )
    assert r.status_code == 201, r.text
    assert r.json()["filename"] == "weights.pt"
    assert r.json()["sha256"] == hashlib.sha256(b"abc" * 10).hexdigest()


def test_bad_or_missing_kind_is_422(client: TestClient, upload_file: Any) -> None:
    r = upload_file(b"abc", "checkpoint")
    assert r.status_code == 422
    assert r.json()["detail"][0]["loc"] == "kind"
    assert "model or dataset" in r.json()["detail"][0]["msg"]
    r = client.post("/v1/uploads", files={"file": ("a.pt", b"abc")})
    assert r.status_code == 422 and r.json()["detail"][0]["loc"] == "kind"


def test_missing_file_is_422(client: TestClient) -> None:
    r = client.post("/v1/uploads", files={"kind": (None, "model")})
    assert r.status_code == 422
    assert r.json()["detail"][0]["loc"] == "file"


def test_not_multipart_is_415(client: TestClient) -> None:
    r = client.post("/v1/uploads", json={"kind": "model"})
    assert r.status_code == 415
    assert "multipart/form-data" in r.json()["detail"]


def test_unknown_upload_is_404(client: TestClient) -> None:
    r = client.get("/v1/uploads/nope")
    assert r.status_code == 404 and r.json()["detail"] == "upload 'nope' not found"


def test_uploads_can_be_found_by_their_sha256(client: TestClient, upload_file: Any) -> None:
    """What a client asks before uploading a file it may have sent already."""
    content = b"dataset bytes" * 10
    sha = hashlib.sha256(content).hexdigest()
    assert client.get("/v1/uploads", params={"sha256": sha}).json() == {"items": []}
    up = upload_file(content, "dataset", "d.npz").json()
    found = client.get("/v1/uploads", params={"sha256": sha}).json()["items"]
    assert found == [up]
    assert client.get("/v1/uploads", params={"sha256": sha, "kind": "model"}).json()["items"] == []
    r = client.get("/v1/uploads", params={"sha256": "not-a-hash"})
    assert r.status_code == 422 and r.json()["detail"][0]["loc"] == "query.sha256"
