"""The Alembic migrations and the SQLAlchemy models describe the same schema."""

import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import create_engine, inspect, text

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


def _alembic(url: str, action: str, revision: str) -> None:
    from alembic import command
    from alembic.config import Config

    cfg = Config()
    cfg.set_main_option("script_location", str(Path(__file__).resolve().parents[2] / "migrations"))
    cfg.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    getattr(command, action)(cfg, revision)


@pytest.fixture(params=["sqlite", "postgresql"])
def blank_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """An empty database of each backend (PostgreSQL: a new database, dropped afterwards)."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'steps.sqlite'}"
        return
    from tests.conftest import PG_ADMIN_URL

    name = f"distillery_mig_{uuid.uuid4().hex[:12]}"
    admin = create_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    try:
        yield PG_ADMIN_URL.rsplit("/", 1)[0] + f"/{name}"
    finally:
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


EVALUATION_0002 = (
    "INSERT INTO evaluations (job_id, teacher_accuracy, student_accuracy, gap, teacher_params, "
    "student_params, compression_ratio, teacher_latency_ms, student_latency_ms, "
    "student_size_bytes, gate_passed, gates, report, created_at) VALUES (:id, 97.0, 95.0, 2.0, "
    "1000, 100, 10.0, 0.5, 0.1, 400, true, '{}', '{}', :at)"
)


def test_0003_keeps_old_evaluations_and_downgrades(blank_url: str) -> None:
    """0002 → 0003: an existing evaluation gets gap_reference 'teacher'; a teacher-less one can
    be written; back to 0002 drops the columns (and the rows the old schema cannot hold)."""
    _alembic(blank_url, "upgrade", "0002")
    engine = make_engine(blank_url)
    now = datetime.now(UTC)

    def add_job(conn: Any, job_id: str) -> None:
        conn.execute(
            text(
                "INSERT INTO jobs (id, name, spec, status, attempts, attempt_floor, progress, "
                "created_at, updated_at) VALUES (:id, 'j', '{}', 'succeeded', 1, 0, 1.0, :at, :at)"
            ),
            {"id": job_id, "at": now},
        )

    with engine.begin() as conn:
        add_job(conn, "old")
        conn.execute(text(EVALUATION_0002), {"id": "old", "at": now})
    _alembic(blank_url, "upgrade", "head")
    with engine.begin() as conn:
        row = conn.execute(
            text("SELECT gap_reference, dynamic_teacher_accuracy FROM evaluations")
        ).one()
        assert tuple(row) == ("teacher", None)
        add_job(conn, "gpd")
        conn.execute(
            text(
                "INSERT INTO evaluations (job_id, student_accuracy, gap, student_params, "
                "student_latency_ms, student_size_bytes, dynamic_teacher_accuracy, "
                "dynamic_teacher_params, dynamic_teacher_ratio, gap_reference, "
                "gap_dynamic_student, gate_passed, gates, report, created_at) VALUES ('gpd', 90.0, "
                "1.5, 400, 0.1, 2000, 91.5, 1500, 2, 'dynamic_teacher', 1.5, true, '{}', '{}', :at)"
            ),
            {"at": now},
        )
    _alembic(blank_url, "downgrade", "0002")
    with engine.connect() as conn:
        ids = conn.execute(text("SELECT job_id FROM evaluations")).scalars().all()
        assert ids == ["old"]
    columns = {c["name"] for c in inspect(engine).get_columns("evaluations")}
    assert "gap_reference" not in columns and "dynamic_teacher_accuracy" not in columns
    engine.dispose()
    _alembic(blank_url, "upgrade", "head")
    assert diff(blank_url) == []


def test_0004_keeps_keys_working_and_a_downgrade_revokes_what_0003_cannot_limit(
    blank_url: str,
) -> None:
    """0003 → 0004: existing keys become write keys that never expire; a project gets no quota
    overrides. Back to 0003, read-only and expiring keys are revoked (0003 would let them do
    everything forever), the others stay as they were."""
    _alembic(blank_url, "upgrade", "0003")
    engine = make_engine(blank_url)
    now = datetime.now(UTC)
    with engine.begin() as conn:
        conn.execute(
            text("INSERT INTO projects (id, name, created_at) VALUES ('p', 'team', :at)"),
            {"at": now},
        )
        for key_id in ("old", "ro", "exp"):
            conn.execute(
                text(
                    "INSERT INTO api_keys (id, project_id, name, prefix, key_hash, created_at) "
                    "VALUES (:id, 'p', '', 'dk_x', :hash, :at)"
                ),
                {"id": key_id, "hash": key_id * 8, "at": now},
            )
    _alembic(blank_url, "upgrade", "head")
    with engine.begin() as conn:
        rows = conn.execute(text("SELECT id, scope, expires_at FROM api_keys ORDER BY id"))
        assert [tuple(r) for r in rows] == [
            ("exp", "write", None),
            ("old", "write", None),
            ("ro", "write", None),
        ]
        assert conn.execute(text("SELECT quotas FROM projects")).scalar() is None
        conn.execute(text("UPDATE api_keys SET scope = 'read' WHERE id = 'ro'"))
        conn.execute(text("UPDATE api_keys SET expires_at = :at WHERE id = 'exp'"), {"at": now})
    _alembic(blank_url, "downgrade", "0003")
    with engine.connect() as conn:
        rows = conn.execute(text("SELECT id, revoked_at IS NOT NULL FROM api_keys ORDER BY id"))
        assert [tuple(r) for r in rows] == [("exp", True), ("old", False), ("ro", True)]
    columns = {c["name"] for c in inspect(engine).get_columns("api_keys")}
    assert "scope" not in columns and "expires_at" not in columns
    engine.dispose()
    _alembic(blank_url, "upgrade", "head")
    assert diff(blank_url) == []
