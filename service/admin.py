"""`distill keys ...` and `distill projects ...`: admin commands on the service's database.

Service side (they import store), added to `distill` by service/cli.py.

They talk to the database directly (DISTILLERY_DATABASE_URL, or the embedded SQLite file under
--data-dir), not to the API: whoever can run them can already read every job. A new key is
printed once, alone on stdout (`TOKEN=$(distill keys create --project ci)`), and stored only
as its sha256.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from client.outcome import EXIT_ERROR, EXIT_INVALID

if TYPE_CHECKING:  # sqlalchemy is imported when an admin command runs, not for every `distill`
    from sqlalchemy.orm import Session

keys_app = typer.Typer(
    help="API keys of projects (admin: works on the database directly).", no_args_is_help=True
)
projects_app = typer.Typer(
    help="Projects: who sees which jobs (admin: works on the database directly).",
    no_args_is_help=True,
)
err = Console(stderr=True, highlight=False, soft_wrap=True)
# piped (CI logs, grep): wide enough that tables never cut ids
# no `file=`: rich then writes to whatever sys.stdout is at the time (test runners swap it)
out = Console(highlight=False, soft_wrap=True, width=None if sys.stdout.isatty() else 200)


def database_option() -> Any:
    return typer.Option(
        None,
        "--database-url",
        envvar="DISTILLERY_DATABASE_URL",
        help="SQLAlchemy URL (default: the embedded SQLite database in --data-dir)",
        show_default=False,
    )


def data_dir_option() -> Any:
    return typer.Option(
        None,
        "--data-dir",
        envvar="DISTILLERY_DATA_DIR",
        help="embedded-mode folder, as given to `distill serve` [default: distillery-data]",
        show_default=False,
    )


@contextmanager
def admin_session(database_url: str | None, data_dir: Path | None) -> Iterator[Session]:
    """A session on the service's database, committed at the end. The embedded SQLite database
    is created (migrated) if needed; a server database must have been migrated already."""
    from sqlalchemy import inspect
    from sqlalchemy.orm import Session

    from store.db import make_engine, upgrade_schema
    from store.settings import Settings

    overrides: dict[str, Any] = {}
    if database_url:
        overrides["database_url"] = database_url
    if data_dir is not None:
        overrides["data_dir"] = data_dir
    settings = Settings(**overrides)
    url = settings.resolved_database_url
    if url.startswith("sqlite"):
        upgrade_schema(url)
    engine = make_engine(url)
    try:
        if not inspect(engine).has_table("api_keys"):
            err.print(
                "[red]error:[/] the database has no api_keys table; run "
                "`alembic upgrade head` against it first"
            )
            raise typer.Exit(EXIT_ERROR)
        with Session(engine, expire_on_commit=False) as session:
            yield session
            session.commit()
    finally:
        engine.dispose()


@keys_app.command("create")
def create(
    project: str = typer.Option(..., "--project", help="project name (created if new)"),
    name: str = typer.Option("", "--name", help="a label for the key, e.g. gitlab-ci"),
    database_url: str | None = database_option(),
    data_dir: Path | None = data_dir_option(),
) -> None:
    """Create an API key for a project; prints the key once, on stdout."""
    from store.auth import create_key, get_or_create_project

    if not project.strip() or len(project) > 200:
        err.print("[red]error:[/] --project must be 1 to 200 characters")
        raise typer.Exit(EXIT_INVALID)
    with admin_session(database_url, data_dir) as s:
        _, new = get_or_create_project(s, project)
        row, key = create_key(s, project, name)
    what = "new project" if new else "project"
    err.print(
        f"created key {row.id} ({row.prefix}…) for {what} {escape(project)!r}; this is the only "
        "time it is shown: store it as a secret (DISTILLERY_TOKEN)"
    )
    typer.echo(key)


@keys_app.command("list")
def list_(
    project: str | None = typer.Option(None, "--project", help="only this project's keys"),
    as_json: bool = typer.Option(False, "--json"),
    database_url: str | None = database_option(),
    data_dir: Path | None = data_dir_option(),
) -> None:
    """List keys (id, project, first characters, last use); never the keys themselves."""
    from store.auth import list_keys

    with admin_session(database_url, data_dir) as s:
        rows = list_keys(s, project)
    items = [
        {
            "id": k.id,
            "project": p,
            "name": k.name,
            "prefix": k.prefix,
            "created_at": k.created_at.isoformat(),
            "last_used_at": k.last_used_at.isoformat() if k.last_used_at else None,
            "revoked_at": k.revoked_at.isoformat() if k.revoked_at else None,
        }
        for k, p in rows
    ]
    if as_json:
        typer.echo(json.dumps(items))
        return
    table = Table("id", "project", "name", "key", "created", "last used", "state", box=None)
    for i in items:
        table.add_row(
            i["id"],
            escape(i["project"]),
            escape(i["name"]),
            i["prefix"] + "…",
            i["created_at"][:19].replace("T", " "),
            (i["last_used_at"] or "never")[:19].replace("T", " "),
            "revoked" if i["revoked_at"] else "active",
        )
    out.print(table)


@keys_app.command("revoke")
def revoke(
    key_id: str = typer.Argument(..., metavar="KEY_ID", help="id from `distill keys list`"),
    database_url: str | None = database_option(),
    data_dir: Path | None = data_dir_option(),
) -> None:
    """Revoke a key: requests with it get 401 from then on."""
    from store.auth import revoke_key

    with admin_session(database_url, data_dir) as s:
        key = revoke_key(s, key_id)
    if key is None:
        err.print(
            f"[red]error:[/] no key with id {escape(key_id)!r} (give the id, or 6+ of its first "
            "characters that match one key; see `distill keys list`)"
        )
        raise typer.Exit(EXIT_INVALID)
    err.print(f"revoked key {key.id} ({key.prefix}…)")


@projects_app.command("list")
def projects(
    database_url: str | None = database_option(),
    data_dir: Path | None = data_dir_option(),
) -> None:
    """List projects with their number of active keys and jobs."""
    from sqlalchemy import func, select

    from store.models import ApiKey, Job, Project

    with admin_session(database_url, data_dir) as s:
        keys = dict(
            s.execute(
                select(ApiKey.project_id, func.count())
                .where(ApiKey.revoked_at.is_(None))
                .group_by(ApiKey.project_id)
            ).all()
        )
        jobs = dict(s.execute(select(Job.owner, func.count()).group_by(Job.owner)).all())
        rows = list(s.scalars(select(Project).order_by(Project.name)))
    table = Table("project", "active keys", "jobs", "webhook secret", box=None)
    for p in rows:
        table.add_row(
            escape(p.name),
            str(keys.get(p.id, 0)),
            str(jobs.get(p.name, 0)),
            "own" if p.webhook_secret else "service default",
        )
    out.print(table)


@projects_app.command("webhook-secret")
def webhook_secret(
    project: str = typer.Argument(..., metavar="PROJECT"),
    secret: str | None = typer.Option(
        None, "--secret", help="use this secret instead of a new random one", show_default=False
    ),
    database_url: str | None = database_option(),
    data_dir: Path | None = data_dir_option(),
) -> None:
    """Give a project its own webhook signing secret (replacing any earlier one); prints it."""
    from store.auth import set_webhook_secret

    with admin_session(database_url, data_dir) as s:
        value = set_webhook_secret(s, project, secret)
    err.print(f"project {escape(project)!r} now signs its webhooks with this secret:")
    typer.echo(value)
