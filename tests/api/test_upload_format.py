"""A dataset's format is its file name's suffix (the worker picks the reader by it), so the name
an upload is stored under must be one the user can fix: uploads are deduplicated by sha256,
and sending the same bytes again under a usable name (or with an explicit `format`) used to
return the old, unusable upload unchanged."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from sqlalchemy.orm import Session

from api.upload_names import DATASET_SUFFIXES
from kdcore.data import load_data
from kdcore.validation import parse_spec
from worker.inputs import localize_files


def npz_bytes(rows: int = 12) -> bytes:
    rng = np.random.default_rng(0)
    buf = io.BytesIO()
    x = rng.normal(size=(rows, 3)).astype(np.float32)
    np.savez(buf, x_train=x, y_train=np.arange(rows) % 2)
    return buf.getvalue()


def send(client: TestClient, content: bytes, filename: str, **fields: str) -> Any:
    return client.post(
        "/v1/uploads",
        files={"file": (filename, content, "application/octet-stream")},
        data={"kind": "dataset", **fields},
    )


def submit(client: TestClient, new_spec: Any, ref: str) -> Any:
    return client.post("/v1/jobs", json=new_spec(data={"source": ref}))


def test_the_same_bytes_sent_again_under_a_usable_name_fix_the_upload(
    client: TestClient, new_spec: Any
) -> None:
    content = npz_bytes()
    first = send(client, content, "data")
    assert first.status_code == 201, first.text
    assert first.json()["filename"] == "data"
    refused = submit(client, new_spec, first.json()["ref"])
    assert refused.status_code == 422 and "format=npz" in refused.text

    again = send(client, content, "train.npz")
    assert again.status_code == 200, again.text
    assert again.json()["id"] == first.json()["id"]  # the same upload, now usable
    assert again.json()["filename"] == "train.npz"
    assert client.get(f"/v1/uploads/{first.json()['id']}").json()["filename"] == "train.npz"
    assert submit(client, new_spec, first.json()["ref"]).status_code == 201


def test_an_explicit_format_names_a_file_without_a_suffix(
    client: TestClient, new_spec: Any
) -> None:
    r = send(client, npz_bytes(14), "blob", format="npz")
    assert r.status_code == 201, r.text
    assert r.json()["filename"] == "blob.npz"
    assert submit(client, new_spec, r.json()["ref"]).status_code == 201


def test_an_explicit_format_given_later_fixes_the_upload(client: TestClient) -> None:
    content = b"a,b,label\n1,2,0\n3,4,1\n"
    first = send(client, content, "-")
    again = send(client, content, "-", format=".CSV")
    assert again.status_code == 200, again.text
    assert (again.json()["id"], again.json()["filename"]) == (first.json()["id"], "-.csv")


@pytest.mark.parametrize(
    ("second_name", "fields"), [("other.csv", {}), ("train.npz", {"format": "csv"})]
)
def test_bytes_already_stored_in_another_format_are_a_409(
    client: TestClient, second_name: str, fields: dict[str, str]
) -> None:
    """One upload per bytes (the unique key): a second format cannot be honoured, so it is
    refused, naming the upload, instead of silently ignored."""
    content = npz_bytes(16)
    first = send(client, content, "train.npz")
    r = send(client, content, second_name, **fields)
    assert r.status_code == 409, r.text
    body = r.json()
    assert body["code"] == "format_conflict" and body["upload_id"] == first.json()["id"]
    assert "train.npz" in body["detail"]
    assert client.get(f"/v1/uploads/{first.json()['id']}").json()["filename"] == "train.npz"


def test_names_of_the_same_format_keep_the_first(client: TestClient) -> None:
    content = npz_bytes(18)
    first = send(client, content, "a.pt")
    for name in ("b.pt", "c.pth", "d.PT"):
        r = send(client, content, name)
        assert r.status_code == 200 and r.json()["filename"] == "a.pt", r.text
    assert first.status_code == 201


@pytest.mark.parametrize(
    ("kind", "fmt", "says"),
    [("dataset", "parquet", "npz, pt, pth, csv"), ("model", "npz", "datasets only")],
)
def test_a_bad_format_is_a_422_naming_it(
    client: TestClient, kind: str, fmt: str, says: str
) -> None:
    r = client.post(
        "/v1/uploads",
        files={"file": ("x", b"bytes", "application/octet-stream")},
        data={"kind": kind, "format": fmt},
    )
    assert r.status_code == 422, r.text
    detail = {d["loc"]: d["msg"] for d in r.json()["detail"]}
    assert says in detail["format"]


def test_the_worker_reads_the_fixed_upload_by_its_new_suffix(
    app: FastAPI, client: TestClient, db: Session, new_spec: Any, tmp_path: Path
) -> None:
    content = npz_bytes(20)
    upload_id = send(client, content, "data").json()["id"]
    send(client, content, "train.npz")
    spec = parse_spec(new_spec(data={"source": f"upload:{upload_id}"}))
    local, _ = localize_files(db, spec, app.state.blobs, tmp_path)
    assert local.data.source.endswith("train.npz")
    assert load_data(local.data).x_train.shape[1:] == (3,)


def test_the_formats_are_the_data_loaders() -> None:
    from kdcore.data import FILE_TYPES

    assert DATASET_SUFFIXES == FILE_TYPES
