"""The Alembic migrations and the SQLAlchemy models describe the same schema."""

from pathlib import Path

from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext

from store.db import make_engine, upgrade_schema
from store.models import Base


def diff(url: str) -> list:
    engine = make_engine(url)
    with engine.connect() as conn:
        ctx = MigrationContext.configure(conn, opts={"compare_type": True})
        result = compare_metadata(ctx, Base.metadata)
    engine.dispose()
    return result


def test_postgres_schema_matches_models(pg_url: str) -> None:
    assert diff(pg_url) == []


def test_sqlite_schema_matches_models(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'db.sqlite'}"
    upgrade_schema(url)
    assert diff(url) == []


def test_an_empty_database_differs(tmp_path: Path) -> None:
    """The comparison can fail: a database without the migrations shows every table missing."""
    url = f"sqlite:///{tmp_path / 'empty.sqlite'}"
    tables = {d[1].name for d in diff(url) if d[0] == "add_table"}
    assert {"jobs", "job_events", "metrics", "artifacts", "evaluations", "uploads"} <= tables
    assert {"projects", "api_keys", "idempotency_keys", "webhook_deliveries"} <= tables
