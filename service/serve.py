"""`distill serve`: the whole service on one machine with one command.

The API runs in this process (uvicorn); one Celery worker and the reconciler run as child
processes that share this process's settings through the environment. With no DISTILLERY_*
variables set, everything lives under ./distillery-data/ (SQLite, blobs, a filesystem broker),
so nothing needs installing; DISTILLERY_DATABASE_URL and DISTILLERY_BROKER_URL switch to
PostgreSQL and Redis. The command itself is in service/cli.py.
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


def serve(host: str, port: int, data_dir: Path, console: Console, *, auth: bool = True) -> None:
    os.environ.setdefault("DISTILLERY_DATA_DIR", str(data_dir.resolve()))
    # the flag alone decides (not an inherited DISTILLERY_AUTH): keys unless --no-auth
    os.environ["DISTILLERY_AUTH"] = "keys" if auth else "none"
    from store.db import upgrade_schema
    from store.settings import get_settings

    get_settings.cache_clear()
    settings = get_settings()
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    upgrade_schema(settings.resolved_database_url)
    console.print(f"database: {_redact(settings.resolved_database_url)}")
    console.print(f"broker:   {_redact(settings.resolved_broker_url)}")
    console.print(f"blobs:    {settings.resolved_blob_dir}")
    if auth:
        _say_keys(settings.resolved_database_url, data_dir, console)
    else:
        console.print(
            "[bold yellow]WARNING: authentication is OFF (--no-auth).[/] Requests need no API "
            f"key: anyone who can reach http://{host}:{port} can read, submit and cancel every "
            "job. Use it only on a machine of your own."
        )

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


def _say_keys(url: str, data_dir: Path, console: Console) -> None:
    """Keys are required: say how to get one when there is none yet."""
    from sqlalchemy import func, select

    from store.db import make_engine
    from store.models import ApiKey

    engine = make_engine(url)
    try:
        with engine.connect() as conn:
            active = conn.execute(
                select(func.count()).select_from(ApiKey).where(ApiKey.revoked_at.is_(None))
            ).scalar_one()
    finally:
        engine.dispose()
    console.print(f"auth:     API keys required ({active} active)")
    if not active:
        console.print(
            "          create one: distill keys create --project NAME"
            + ("" if data_dir == Path("distillery-data") else f" --data-dir {data_dir}")
            + "   (or run with --no-auth on a machine of your own)"
        )


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
