"""The admin commands of issue #11, on an embedded (SQLite) service folder: keys with an expiry
and a read-only scope, a project's quotas, and `distill gc`."""

from __future__ import annotations

import json
import os
import time
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from typer.testing import CliRunner

from client.cli import app
from store.blobs import BlobStore

# the embedded database and blob folder under --data-dir, whatever this shell has set
ENV: dict[str, str | None] = {
    "DISTILLERY_DATABASE_URL": None,
    "DISTILLERY_BLOB_DIR": None,
    "DISTILLERY_RETENTION_DAYS": None,
}


def distill(tmp_path: Path, *args: str) -> Any:
    return CliRunner().invoke(app, [*args, "--data-dir", str(tmp_path / "data")], env=ENV)


def test_keys_with_expiry_and_scope(tmp_path: Path) -> None:
    made = distill(
        tmp_path, "keys", "create", "--project", "vision", "--read-only", "--expires-in-days", "30"
    )
    assert made.exit_code == 0, made.stderr
    assert "read-only" in made.stderr and "expires" in made.stderr
    assert distill(tmp_path, "keys", "create", "--project", "vision").exit_code == 0
    listed = json.loads(distill(tmp_path, "keys", "list", "--json").stdout)
    reader, writer = listed
    assert (reader["scope"], reader["state"], writer["scope"], writer["expires_at"]) == (
        "read",
        "active",
        "write",
        None,
    )
    days = datetime.fromisoformat(reader["expires_at"]) - datetime.fromisoformat(
        reader["created_at"]
    )
    assert abs(days - timedelta(days=30)) < timedelta(minutes=1)
    table = distill(tmp_path, "keys", "list").stdout
    assert "read" in table and "never" in table
    bad = distill(tmp_path, "keys", "create", "--project", "vision", "--expires-in-days", "0")
    assert bad.exit_code == 2 and "--expires-in-days" in bad.stderr


def test_project_quotas(tmp_path: Path) -> None:
    assert distill(tmp_path, "keys", "create", "--project", "vision").exit_code == 0
    r = distill(
        tmp_path,
        "projects",
        "quota",
        "vision",
        "--max-queued",
        "5",
        "--max-storage",
        "1.5GiB",
        "--max-gpu-seconds-per-day",
        "none",
        "--json",
    )
    assert r.exit_code == 0, r.stderr
    rows = {row["quota"]: row for row in json.loads(r.stdout)}
    assert rows["max_queued_jobs"] == {
        "quota": "max_queued_jobs",
        "limit": 5,
        "source": "project",
        "used": 0,
    }
    assert rows["max_storage_bytes"]["limit"] == 1.5 * 2**30
    assert (
        rows["max_gpu_seconds_per_day"]["limit"],
        rows["max_gpu_seconds_per_day"]["source"],
    ) == (
        None,
        "project",
    )
    assert rows["max_running_jobs"]["source"] == "service"
    back = distill(tmp_path, "projects", "quota", "vision", "--max-queued", "default", "--json")
    rows = {row["quota"]: row for row in json.loads(back.stdout)}
    assert (rows["max_queued_jobs"]["source"], rows["max_queued_jobs"]["limit"]) == (
        "service",
        None,
    )
    assert "max_storage_bytes" in distill(tmp_path, "projects", "quota", "vision").stdout
    bad = distill(tmp_path, "projects", "quota", "vision", "--max-running", "many")
    assert bad.exit_code == 2 and "--max-running" in bad.stderr
    assert distill(tmp_path, "projects", "quota", "nobody").exit_code == 2


def test_gc_command(tmp_path: Path) -> None:
    assert distill(tmp_path, "projects", "list").exit_code == 0  # creates the embedded service
    blobs = BlobStore(tmp_path / "data" / "blobs")
    sha, _ = blobs.put_stream([b"nobody's file"])
    past = time.time() - 2 * 86400
    os.utime(blobs.path(sha), (past, past))

    dry = distill(tmp_path, "gc", "--dry-run", "--json")
    assert dry.exit_code == 0, dry.stderr
    assert json.loads(dry.stdout)["orphan_blobs"] == 1 and blobs.exists(sha)
    done = distill(tmp_path, "gc")
    assert done.exit_code == 0 and "1 files no row names" in done.stderr
    assert not blobs.exists(sha)
    assert distill(tmp_path, "gc", "--retention-days", "0").exit_code == 2
