"""The `distill` command line.

Local, through the engine (kdcore, imported when a command runs; `distillery[engine]`): `run`,
`validate`, `zoo`. Against a service (client/remote.py, on the SDK): `submit`, `jobs`, `status`,
`logs`, `cancel`, `retry`, `download`. The service's own commands (`serve`, `keys`, `projects`)
come from the service package when it is installed (client/plugins.py); the client never
imports it.

Exit codes are part of the contract with CI pipelines (client/outcome.py has the table):
0 success, 1 anything else went wrong (a job failed or was cancelled), 2 invalid spec or input,
3 a quality gate failed, 4 timed out waiting for a job.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import typer
from rich.console import Console

from client import remote
from client.engine import needs_engine
from client.outcome import EXIT_ERROR, EXIT_GATE, EXIT_INVALID
from client.plugins import add_installed_commands
from client.progress import RichProgress
from kdcore.report import Report

app = typer.Typer(
    help="Distillery: compress a teacher model into a small student by knowledge distillation.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
err = Console(stderr=True)


@app.callback()
def main() -> None:
    """Distillery command line."""


@app.command()
@needs_engine
def run(
    spec_path: Path = typer.Argument(..., metavar="SPEC", help="job spec, YAML or JSON"),
    out: Path = typer.Option(..., "--out", "-o", help="folder for report.json and artifacts"),
    resume: bool = typer.Option(
        True, help="continue from checkpoints in OUT/checkpoints when a run was interrupted"
    ),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="no progress bars"),
) -> None:
    """Run a distillation job locally: train/load the teacher, distil, evaluate, export."""
    from kdcore.checkpoint import FolderCheckpoints
    from kdcore.errors import InputError
    from kdcore.pipeline import run as run_job
    from kdcore.spec import SpecError
    from kdcore.validation import load_spec

    try:
        spec = load_spec(spec_path)
    except SpecError as exc:
        _fail_invalid(f"invalid spec {spec_path}", exc.errors)
    ckpt_dir = out / "checkpoints"
    if not resume and ckpt_dir.exists():
        for f in ckpt_dir.glob("*.ckpt.pt"):
            f.unlink()
    try:
        with RichProgress(err, disable=quiet) as progress:
            report = run_job(spec, out, callbacks=progress, checkpoints=FolderCheckpoints(ckpt_dir))
    except InputError as exc:
        _fail_invalid("invalid input", [(exc.field, exc.message)])
    except KeyboardInterrupt:
        err.print("[yellow]interrupted[/]; run the same command again to resume")
        raise typer.Exit(EXIT_ERROR) from None
    except Exception as exc:
        err.print(f"[red]error:[/] {type(exc).__name__}: {exc}")
        raise typer.Exit(EXIT_ERROR) from None
    _print_summary(report, out)
    if not report.gates["passed"]:
        raise typer.Exit(EXIT_GATE)


@app.command()
@needs_engine
def validate(spec_path: Path = typer.Argument(..., metavar="SPEC")) -> None:
    """Check a spec without running it; prints the spec with defaults filled in."""
    from kdcore.spec import SpecError
    from kdcore.validation import load_spec

    try:
        spec = load_spec(spec_path)
    except SpecError as exc:
        _fail_invalid(f"invalid spec {spec_path}", exc.errors)
    typer.echo(json.dumps(spec.model_dump(mode="json"), indent=2))


@app.command()
@needs_engine
def zoo() -> None:
    """List the built-in architectures and distillation methods."""
    from kdcore.methods import registry as methods
    from kdcore.models import registry as models

    typer.echo("architectures: " + ", ".join(models.names()))
    typer.echo("methods: " + ", ".join(methods.names()))


def _fail_invalid(title: str, errors: list[tuple[str, str]]) -> None:
    err.print(f"[red]{title}[/]")
    for loc, msg in errors:
        err.print(f"  [bold]{loc}[/]: {msg}", highlight=False)
    raise typer.Exit(EXIT_INVALID)


def _print_summary(report: Report, out: Path) -> None:
    t, s, b, d = report.teacher, report.student, report.baseline, report.dynamic_teacher
    con = Console(file=sys.stdout)
    con.print(f"[bold]{report.name}[/] ({report.method['name']})")
    if t is not None:
        con.print(f"  teacher  acc {t.accuracy:6.2f}%  params {t.params:>10,}")
    if d is not None:
        con.print(
            f"  dynamic  acc {d.accuracy:6.2f}%  params {d.params:>10,}"
            f"  (GPD, ratio {d.ratio}, scenario {d.scenario})"
        )
    smaller = f"  ({report.compression}x smaller)" if report.compression else ""
    con.print(f"  student  acc {s.accuracy:6.2f}%  params {s.params:>10,}{smaller}")
    if b is not None:
        con.print(f"  baseline acc {b.accuracy:6.2f}%  (student trained alone)")
    against = " (to the dynamic teacher)" if report.gap_reference != "teacher" else ""
    con.print(f"  gap {report.gap:.2f} points{against}")
    for check in report.gates["checks"]:
        verdict = "[green]pass[/]" if check["passed"] else "[red]FAIL[/]"
        con.print(f"  gate {check['name']}: {check['value']} vs {check['threshold']} {verdict}")
    for a in report.artifacts:
        con.print(f"  {a.format:<13} {a.path}  (max abs diff {a.max_abs_diff:.1e})")
    con.print(f"  report: {out / 'report.json'}")


# after the local commands, so `distill --help` lists those first
remote.register(app)
add_installed_commands(app)


if __name__ == "__main__":  # pragma: no cover
    app()
