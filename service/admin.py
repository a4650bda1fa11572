"""`distill keys ...`, `distill projects ...` and `distill gc`: admin commands on the service's
database (and, for `gc`, its blob store).

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
from typing import TYPE_CHECKING, Any, TypedDict

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from client.outcome import EXIT_ERROR, EXIT_INVALID

if TYPE_CHECKING:  # sqlalchemy is imported when an admin command runs, not for every `distill`
    from sqlalchemy.orm import Session

    from store.settings import Settings

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


def admin_settings(database_url: str | None, data_dir: Path | None, **more: Any) -> Settings:
    """The service's settings (DISTILLERY_*), with the command line's options over them."""
    from store.settings import Settings

    overrides: dict[str, Any] = {k: v for k, v in more.items() if v is not None}
    if database_url:
        overrides["database_url"] = database_url
    if data_dir is not None:
        overrides["data_dir"] = data_dir
    return Settings(**overrides)


@contextmanager
def admin_session(
    database_url: str | None, data_dir: Path | None, settings: Settings | None = None
) -> Iterator[Session]:
    """A session on the service's database, committed at the end. The embedded SQLite database
    is created (migrated) if needed; a server database must have been migrated already."""
    from sqlalchemy import inspect
    from sqlalchemy.orm import Session

    from store.db import make_engine, upgrade_schema

    settings = settings or admin_settings(database_url, data_dir)
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
    expires_in_days: float | None = typer.Option(
        None,
        "--expires-in-days",
        help="the key stops working this many days from now (401) [default: never]",
        show_default=False,
    ),
    read_only: bool = typer.Option(
        False,
        "--read-only",
        help="the key may only read (GET, HEAD): dashboards, CI readers; writes get 403",
    ),
    database_url: str | None = database_option(),
    data_dir: Path | None = data_dir_option(),
) -> None:
    """Create an API key for a project; prints the key once, on stdout."""
    from datetime import timedelta

    from store.auth import create_key, get_or_create_project
    from store.models import KeyScope, utcnow

    if not project.strip() or len(project) > 200:
        err.print("[red]error:[/] --project must be 1 to 200 characters")
        raise typer.Exit(EXIT_INVALID)
    if expires_in_days is not None and not 0 < expires_in_days <= 36500:
        err.print("[red]error:[/] --expires-in-days must be above 0 (and at most 36500)")
        raise typer.Exit(EXIT_INVALID)
    expires = utcnow() + timedelta(days=expires_in_days) if expires_in_days else None
    scope = KeyScope.read if read_only else KeyScope.write
    with admin_session(database_url, data_dir) as s:
        _, new = get_or_create_project(s, project)
        row, key = create_key(s, project, name, scope=scope, expires_at=expires)
    what = "new project" if new else "project"
    limits = ("read-only" if read_only else "") + (
        f"{', ' if read_only else ''}expires {expires:%Y-%m-%d %H:%M} UTC" if expires else ""
    )
    err.print(
        f"created key {row.id} ({row.prefix}…{f', {limits}' if limits else ''}) for {what} "
        f"{escape(project)!r}; this is the only time it is shown: store it as a secret "
        "(DISTILLERY_TOKEN)"
    )
    typer.echo(key)


class KeyListing(TypedDict):
    """One key as `distill keys list --json` prints it."""

    id: str
    project: str
    name: str
    prefix: str
    scope: str
    state: str
    created_at: str
    expires_at: str | None
    last_used_at: str | None
    revoked_at: str | None


@keys_app.command("list")
def list_(
    project: str | None = typer.Option(None, "--project", help="only this project's keys"),
    as_json: bool = typer.Option(False, "--json"),
    database_url: str | None = database_option(),
    data_dir: Path | None = data_dir_option(),
) -> None:
    """List keys (id, project, first characters, scope, expiry, last use); never the keys
    themselves. `last used` is updated at most once a minute."""
    from store.auth import key_state, list_keys

    with admin_session(database_url, data_dir) as s:
        rows = list_keys(s, project)
    items: list[KeyListing] = [
        {
            "id": k.id,
            "project": p,
            "name": k.name,
            "prefix": k.prefix,
            "scope": k.scope,
            "state": key_state(k),
            "created_at": k.created_at.isoformat(),
            "expires_at": k.expires_at.isoformat() if k.expires_at else None,
            "last_used_at": k.last_used_at.isoformat() if k.last_used_at else None,
            "revoked_at": k.revoked_at.isoformat() if k.revoked_at else None,
        }
        for k, p in rows
    ]
    if as_json:
        typer.echo(json.dumps(items))
        return
    columns = ("id", "project", "name", "key", "scope", "created", "expires", "last used", "state")
    table = Table(*columns, box=None)
    for i in items:
        table.add_row(
            i["id"],
            escape(i["project"]),
            escape(i["name"]),
            i["prefix"] + "…",
            i["scope"],
            i["created_at"][:19].replace("T", " "),
            (i["expires_at"] or "never")[:19].replace("T", " "),
            (i["last_used_at"] or "never")[:19].replace("T", " "),
            i["state"],
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


UNITS = {"": 1, "b": 1, "kb": 10**3, "mb": 10**6, "gb": 10**9, "tb": 10**12}
UNITS.update({"kib": 2**10, "mib": 2**20, "gib": 2**30, "tib": 2**40})


def quota_value(option: str, text: str, size: bool = False) -> float | str | None:
    """A quota option's value: a number (sizes may say 20GB, 1.5GiB), `none` for no limit,
    `default` for the service's setting; exit 2 naming the option otherwise."""
    word = text.strip().lower()
    if word in ("none", "unlimited"):
        return None
    if word == "default":
        return "default"
    number, unit = word, ""
    if size:
        digits = word.rstrip("kmgtib ")
        number, unit = digits, word[len(digits) :].strip()
    try:
        value = float(number) * UNITS[unit]
    except (ValueError, KeyError):
        value = -1.0
    if value < 0 or value != value or value == float("inf"):
        kinds = "a size in bytes (or 20GB, 1.5GiB)" if size else "a number"
        err.print(f"[red]error:[/] {option} takes {kinds}, `none` or `default`; not {text!r}")
        raise typer.Exit(EXIT_INVALID)
    return value


def _shown(value: Any) -> str:
    if value is None:
        return "none"
    return f"{value:,.0f}" if float(value).is_integer() else f"{value:,.1f}"


@projects_app.command("quota")
def quota(
    project: str = typer.Argument(..., metavar="PROJECT"),
    max_running: str | None = typer.Option(
        None, "--max-running", help="jobs running at once", show_default=False
    ),
    max_queued: str | None = typer.Option(
        None, "--max-queued", help="jobs waiting in the queue", show_default=False
    ),
    max_storage: str | None = typer.Option(
        None,
        "--max-storage",
        help="bytes of uploads and artifacts (20GB, 1.5TiB, ...)",
        show_default=False,
    ),
    max_gpu_seconds: str | None = typer.Option(
        None,
        "--max-gpu-seconds-per-day",
        help="running time of the project's jobs in any 24 h",
        show_default=False,
    ),
    rate_limit: str | None = typer.Option(
        None, "--rate-limit-per-minute", help="API requests per key", show_default=False
    ),
    as_json: bool = typer.Option(False, "--json"),
    database_url: str | None = database_option(),
    data_dir: Path | None = data_dir_option(),
) -> None:
    """Show a project's quotas and what it uses; the options change them. Each takes a number,
    `none` (no limit for this project) or `default` (back to the service's DISTILLERY_*
    setting). Going over one is a 429 with Retry-After for the project's new jobs or uploads."""
    from sqlalchemy import select

    from store.models import Project
    from store.quotas import set_quotas, usage

    given = {
        "max_running_jobs": ("--max-running", max_running, False),
        "max_queued_jobs": ("--max-queued", max_queued, False),
        "max_storage_bytes": ("--max-storage", max_storage, True),
        "max_gpu_seconds_per_day": ("--max-gpu-seconds-per-day", max_gpu_seconds, False),
        "rate_limit_per_minute": ("--rate-limit-per-minute", rate_limit, False),
    }
    changes = {
        name: quota_value(option, text, size)
        for name, (option, text, size) in given.items()
        if text is not None
    }
    if changes.get("rate_limit_per_minute") == 0:
        err.print("[red]error:[/] --rate-limit-per-minute must be at least 1 (or none)")
        raise typer.Exit(EXIT_INVALID)
    settings = admin_settings(database_url, data_dir)
    with admin_session(database_url, data_dir, settings) as s:
        row = s.scalars(select(Project).where(Project.name == project)).first()
        if row is None:
            err.print(
                f"[red]error:[/] no project {escape(project)!r}; `distill projects list` shows "
                "them (`distill keys create --project NAME` makes one)"
            )
            raise typer.Exit(EXIT_INVALID)
        if changes:
            set_quotas(s, row, changes)
        rows = usage(s, project, settings)
    if changes:
        err.print(f"project {escape(project)!r}: quotas changed")
    if as_json:
        typer.echo(json.dumps(rows))
        return
    table = Table("quota", "limit", "from", "used now", box=None)
    for r in rows:
        used = "per key, in the API" if r["used"] is None else _shown(r["used"])
        table.add_row(r["quota"], _shown(r["limit"]), r["source"], used)
    out.print(table)


def gc(
    dry_run: bool = typer.Option(False, "--dry-run", help="count what would go; delete nothing"),
    limit: int = typer.Option(1000, "--limit", min=1, help="at most this many of each kind"),
    retention_days: float | None = typer.Option(
        None,
        "--retention-days",
        help="delete artifacts and checkpoints of jobs that ended longer ago "
        "[default: DISTILLERY_RETENTION_DAYS; unset: keep them]",
        show_default=False,
    ),
    as_json: bool = typer.Option(False, "--json"),
    database_url: str | None = database_option(),
    data_dir: Path | None = data_dir_option(),
) -> None:
    """Delete what no job can use any more: checkpoints of succeeded jobs (and of failed or
    cancelled ones past the retention), artifacts past the retention, files no row names and
    temporary files, all older than DISTILLERY_GC_GRACE_SECONDS. Never a queued or running
    job's files, nor a file another upload or artifact shares. One bounded pass: run it from
    cron or a timer."""
    from sqlalchemy import Engine

    from store.blobs import BlobStore
    from store.retention import collect

    if retention_days is not None and retention_days <= 0:
        err.print("[red]error:[/] --retention-days must be above 0")
        raise typer.Exit(EXIT_INVALID)
    settings = admin_settings(database_url, data_dir, retention_days=retention_days)
    with admin_session(database_url, data_dir, settings) as s:
        engine = s.get_bind()
        assert isinstance(engine, Engine)
        report = collect(
            engine,
            BlobStore(settings.resolved_blob_dir),
            settings,
            limit=limit,
            dry_run=dry_run,
        )
    if as_json:
        typer.echo(json.dumps(report.as_dict()))
        return
    verb = "would delete" if dry_run else "deleted"
    kept = (
        f" ({report.jobs_in_use} jobs' kept: a queued job uses them)" if report.jobs_in_use else ""
    )
    err.print(
        f"{verb}: checkpoints of {report.checkpoints} jobs, {report.artifacts} artifacts"
        f"{kept}, {report.orphan_blobs} files no row names, {report.tmp_files} temporary files"
        + ("" if dry_run else f"; {report.blobs} files, {report.bytes:,} bytes freed")
    )
