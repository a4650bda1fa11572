"""`distill serve`: the whole service on one machine with one command.

The API runs in this process (uvicorn); one Celery worker and the reconciler run as child
processes that share this process's settings through the environment. With no DISTILLERY_*
variables set, everything lives under ./distillery-data/ (SQLite, blobs, a filesystem broker),
so nothing needs installing; DISTILLERY_DATABASE_URL and DISTILLERY_BROKER_URL switch to
PostgreSQL and Redis.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

from rich.console import Console


def child_processes(env: dict[str, str], queue: str) -> list[list[str]]:
    """The worker (one job at a time, a fresh child per job) and the reconciler loop."""
    py = sys.executable
    return [
        [
            py,
            "-m",
            "celery",
            "-A",
            "worker.app",
            "worker",
            "--loglevel=INFO",
            "-c",
            "1",
            "-Q",
            queue,
            "--hostname",
            "embedded@%h",
        ],
        [py, "-m", "worker.reconcile_loop"],
    ]


def serve(host: str, port: int, data_dir: Path, console: Console) -> None:
    os.environ.setdefault("DISTILLERY_DATA_DIR", str(data_dir.resolve()))
    from store.db import upgrade_schema
    from store.settings import get_settings

    get_settings.cache_clear()
    settings = get_settings()
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    upgrade_schema(settings.resolved_database_url)
    console.print(f"database: {_redact(settings.resolved_database_url)}")
    console.print(f"broker:   {_redact(settings.resolved_broker_url)}")
    console.print(f"blobs:    {settings.resolved_blob_dir}")

    env = dict(os.environ)
    children = [subprocess.Popen(cmd, env=env) for cmd in child_processes(env, settings.queue)]
    # uvicorn re-raises SIGTERM once it has shut down; make that an exception, so the `finally`
    # below still stops the worker and the reconciler instead of leaving them orphaned.
    signal.signal(signal.SIGTERM, _exit_on_signal)
    try:
        import uvicorn

        from api.main import create_app

        console.print(f"API on http://{host}:{port}  (docs: http://{host}:{port}/docs)")
        uvicorn.run(create_app(settings), host=host, port=port, log_level="info")
    finally:
        for child in children:
            child.terminate()
        for child in children:
            try:
                child.wait(timeout=15)
            except subprocess.TimeoutExpired:
                child.kill()


def _exit_on_signal(signum: int, _frame: object) -> None:
    raise SystemExit(128 + signum)


def _redact(url: str) -> str:
    """Hide a password in a URL before printing it."""
    if "@" in url and "://" in url:
        scheme, rest = url.split("://", 1)
        creds, host = rest.rsplit("@", 1)
        user = creds.split(":", 1)[0]
        return f"{scheme}://{user}:***@{host}" if ":" in creds else url
    return url
