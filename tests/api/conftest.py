"""Fixtures for the API tests: an app on the real PostgreSQL and Redis of tests/conftest.py,
a client for it, a session for arranging rows directly, and a look into the Redis queue."""

from __future__ import annotations

import base64
import json
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from fastapi import FastAPI
from fastapi.testclient import TestClient
from sqlalchemy.orm import Session

from api.main import create_app
from store.settings import Settings

UPLOAD_LIMIT = 4096


@pytest.fixture
def settings(pg_url: str, redis_url: str, queue_name: str, tmp_path: Path) -> Settings:
    return Settings(
        database_url=pg_url,
        broker_url=redis_url,
        queue=queue_name,
        data_dir=tmp_path / "data",
        blob_dir=tmp_path / "blobs",
        max_upload_bytes=UPLOAD_LIMIT,
        # these tests are about jobs, uploads and artifacts, not keys: no keys, one owner
        # (test_auth.py covers keys and projects)
        auth="none",
    )


@pytest.fixture
def app(settings: Settings) -> FastAPI:
    app = create_app(settings)
    app.state.stream_poll_s = 0.05
    return app


@pytest.fixture
def client(app: FastAPI) -> Iterator[TestClient]:
    with TestClient(app) as c:
        yield c


@pytest.fixture
def keyed_app(settings: Settings) -> FastAPI:
    """An app that requires API keys (the shared `app` runs without them)."""
    return create_app(settings.model_copy(update={"auth": "keys"}))


@pytest.fixture
def http(keyed_app: FastAPI) -> Iterator[TestClient]:
    with TestClient(keyed_app) as c:
        yield c


@pytest.fixture
def db(app: FastAPI) -> Iterator[Session]:
    """A session of the app's own engine, to arrange or inspect rows directly."""
    with app.state.sessions() as session:
        yield session


Messages = Callable[[], list[dict[str, Any]]]


@pytest.fixture
def queued(redis_url: str, queue_name: str) -> Iterator[Messages]:
    """The Celery messages waiting in this test's queue, read straight from Redis (kombu's Redis
    transport keeps a list under the queue name), each with `args` decoded from its body."""
    client = redis.Redis.from_url(redis_url)

    def read() -> list[dict[str, Any]]:
        out = []
        for raw in client.lrange(queue_name, 0, -1):
            message = json.loads(raw)
            body = json.loads(base64.b64decode(message["body"]))
            out.append({**message, "args": body[0]})
        return out

    yield read
    client.close()


def unique_name(prefix: str = "job") -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


@pytest.fixture
def new_spec() -> Callable[..., dict[str, Any]]:
    return make_spec


@pytest.fixture
def upload_file(client: TestClient) -> Callable[..., Any]:
    def send(content: bytes, kind: str, filename: str = "file.bin") -> Any:
        return client.post(
            "/v1/uploads",
            files={"file": (filename, content, "application/octet-stream")},
            data={"kind": kind},
        )

    return send


def make_spec(name: str | None = None, **sections: Any) -> dict[str, Any]:
    """A small valid spec (built-in data, teacher trained in the job); `sections` replace
    top-level keys."""
    spec: dict[str, Any] = {
        "name": name or unique_name(),
        "teacher": {"arch": "mlp", "kwargs": {"hidden": [64]}, "train": {"epochs": 1}},
        "student": {"arch": "mlp", "kwargs": {"hidden": [16]}},
        "data": {"source": "digits"},
        "method": {"name": "kd", "temperature": 4.0, "alpha": 0.9},
        "train": {"epochs": 1},
    }
    spec.update(sections)
    return spec
