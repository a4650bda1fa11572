"""The service's commands in `distill`: `serve`, `keys`, `projects`, `gc`.

`distill` (client/cli.py) finds `register` through the `distillery.commands` entry point group
that pyproject.toml declares, so the client never imports the service. `register` raises
ImportError where the service's packages are not installed (`pip install 'distillery[client]'`);
`distill` then goes without these commands.
"""

from __future__ import annotations

from importlib.util import find_spec
from pathlib import Path

import typer
from rich.console import Console

from service import admin
from service.serve import serve as run_service

#: top-level modules the service commands need (the `service` extra; torch for the worker)
REQUIRES = ("sqlalchemy", "alembic", "fastapi", "uvicorn", "celery", "pydantic_settings", "torch")

err = Console(stderr=True)


def register(app: typer.Typer) -> None:
    """Add the service's commands to `app`, or raise ImportError naming what is missing."""
    missing = [name for name in REQUIRES if find_spec(name) is None]
    if missing:
        raise ImportError(f"missing {', '.join(missing)}")
    app.command()(serve)
    app.add_typer(admin.keys_app, name="keys")
    app.add_typer(admin.projects_app, name="projects")
    app.command("gc")(admin.gc)


def serve(
    host: str = typer.Option("127.0.0.1", help="address to listen on"),
    port: int = typer.Option(8000, help="port to listen on"),
    data_dir: Path = typer.Option(
        Path("distillery-data"), help="embedded-mode folder: SQLite, blobs, broker"
    ),
    no_auth: bool = typer.Option(
        False,
        "--no-auth",
        help="accept requests without API keys (anyone who can reach the port sees every job)",
    ),
) -> None:
    """Run the service locally: the API, one worker and the reconciler, with one command.

    Requests need an API key (`distill keys create --project NAME`) unless --no-auth is given.
    """
    run_service(host, port, data_dir, err, auth=not no_auth)
