"""Shared fixtures for the service tests: a fresh PostgreSQL database per test session (dropped
afterwards) and a Redis queue name of its own, on the real servers on loopback."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator

import pytest

PG_ADMIN_URL = os.environ.get(
    "DISTILLERY_TEST_PG", "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"
)
REDIS_URL = os.environ.get("DISTILLERY_TEST_REDIS", "redis://127.0.0.1:6379/0")


@pytest.fixture(scope="session")
def pg_url() -> Iterator[str]:
    """A new, migrated PostgreSQL database for this test session."""
    from sqlalchemy import create_engine, text

    from store.db import upgrade_schema

    name = f"distillery_test_{uuid.uuid4().hex[:12]}"
    admin = create_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    url = PG_ADMIN_URL.rsplit("/", 1)[0] + f"/{name}"
    try:
        upgrade_schema(url)
        yield url
    finally:
        from store.db import _factory, default_engine

        _factory.cache_clear()
        default_engine.cache_clear()
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


@pytest.fixture(scope="session")
def redis_url() -> str:
    return REDIS_URL


@pytest.fixture
def queue_name() -> Iterator[str]:
    """A Redis queue of this test's own; its keys are deleted afterwards."""
    import redis

    name = f"distillery-test-{uuid.uuid4().hex[:8]}"
    yield name
    client = redis.Redis.from_url(REDIS_URL)
    for key in client.scan_iter(f"{name}*"):
        client.delete(key)
