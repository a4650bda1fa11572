"""Commands that other installed parts of Distillery add to `distill`.

The service registers `serve`, `keys` and `projects` under the entry point group
`distillery.commands` (pyproject.toml). `distill` loads whatever that group names, so the client
never imports the service's packages and works without them (`pip install 'distillery[client]'`);
there, the service's commands answer with how to install them instead of "No such command".
"""

from __future__ import annotations

from importlib.metadata import entry_points

import typer
from rich.console import Console
from typer.main import get_command_name

from client.outcome import EXIT_ERROR

GROUP = "distillery.commands"
#: what a full install adds; hidden placeholders stand in for any of them that is missing
SERVICE_COMMANDS = ("serve", "keys", "projects", "gc")
SERVICE_EXTRA = "distillery[service]"

err = Console(stderr=True, highlight=False, soft_wrap=True)


def add_installed_commands(app: typer.Typer) -> None:
    """Let every installed `distillery.commands` entry point register its commands on `app`."""
    problems: list[str] = []
    for entry in entry_points(group=GROUP):
        try:
            entry.load()(app)
        except ImportError as exc:  # a part installed without its dependencies
            problems.append(f"{entry.name}: {exc}")
    reason = "; ".join(problems) or "not installed"
    for name in sorted(set(SERVICE_COMMANDS) - registered(app)):
        add_placeholder(app, name, reason)


def registered(app: typer.Typer) -> set[str]:
    """Names of the commands and command groups on `app` so far."""
    names = {g.name for g in app.registered_groups if g.name}
    for c in app.registered_commands:
        if c.name:
            names.add(c.name)
        elif c.callback is not None:
            names.add(get_command_name(c.callback.__name__))
    return names


def add_placeholder(app: typer.Typer, name: str, reason: str) -> None:
    """A hidden `name` command that says the service is not installed here, and exits 1."""

    def unavailable() -> None:
        err.print(
            f"error: `distill {name}` is a command of the Distillery service, which this "
            f"installation lacks ({reason}); install it with: pip install '{SERVICE_EXTRA}'",
            markup=False,
        )
        raise typer.Exit(EXIT_ERROR)

    unavailable.__doc__ = f"`{name}`: needs the service ({SERVICE_EXTRA})."
    app.command(
        name,
        hidden=True,
        add_help_option=False,
        context_settings={"allow_extra_args": True, "ignore_unknown_options": True},
    )(unavailable)
