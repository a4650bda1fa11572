"""`distill` commands that talk to a Distillery service: submit, jobs, status, logs, cancel,
retry, download, delete. All are built on the SDK (client/sdk.py).

The server and key come from `--server` / `--token` or DISTILLERY_URL / DISTILLERY_TOKEN. What a
script consumes goes to stdout (a job id, `--json` objects, a downloaded path); everything for
people (progress, tables, errors) goes to stderr, except the listings of `jobs`, `status` and
`logs`, which are the output.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from client import junit
from client.errors import (
    ApiError,
    Conflict,
    DistilleryError,
    InvalidRequest,
    NotFound,
    Unauthorized,
)
from client.outcome import EXIT_ERROR, EXIT_INVALID
from client.sdk import DEFAULT_URL, Distillery, Job
from client.submit import SubmitOptions, run

err = Console(stderr=True, highlight=False, soft_wrap=True)
# piped (CI logs, grep): wide enough that tables never cut ids
# no `file=`: rich then writes to whatever sys.stdout is at the time (test runners swap it)
out = Console(highlight=False, soft_wrap=True, width=None if sys.stdout.isatty() else 200)

SERVER_HELP = "Distillery API URL"
TOKEN_HELP = "API key of your project"


def server_option() -> Any:
    return typer.Option(DEFAULT_URL, "--server", envvar="DISTILLERY_URL", help=SERVER_HELP)


def token_option() -> Any:
    return typer.Option(
        None, "--token", envvar="DISTILLERY_TOKEN", help=TOKEN_HELP, show_default=False
    )


@contextmanager
def connected(server: str, token: str | None) -> Iterator[Distillery]:
    """A client; SDK errors become a message on stderr and exit code 2 (refused) or 1."""
    client = Distillery(server, token)
    try:
        yield client
    except (InvalidRequest, Unauthorized, NotFound, Conflict) as exc:
        err.print(f"[red]error:[/] {escape(str(exc))}")
        raise typer.Exit(EXIT_INVALID) from None
    except ApiError as exc:  # 403 (a read-only key) is refused too; 429 and others are not
        err.print(f"[red]error:[/] {escape(str(exc))}")
        raise typer.Exit(EXIT_INVALID if exc.status_code == 403 else EXIT_ERROR) from None
    except DistilleryError as exc:
        err.print(f"[red]error:[/] {escape(str(exc))}")
        raise typer.Exit(EXIT_ERROR) from None
    finally:
        client.close()


def submit(
    spec_path: Path = typer.Argument(..., metavar="SPEC", help="job spec, YAML or JSON"),
    wait: bool = typer.Option(False, "--wait", help="wait for the job to end"),
    timeout: float | None = typer.Option(
        None, "--timeout", help="seconds to wait at most; then exit 4", show_default=False
    ),
    max_gap: float | None = typer.Option(
        None,
        "--max-gap",
        help="gate: fail (exit 3) if the teacher-student gap (to the dynamic teacher for a GPD "
        "job without a teacher) is above this",
    ),
    min_accuracy: float | None = typer.Option(
        None, "--min-accuracy", help="gate: fail (exit 3) if the student's accuracy is below this"
    ),
    as_json: bool = typer.Option(False, "--json", help="print one JSON result on stdout"),
    junit_path: Path | None = typer.Option(
        None, "--junit", help="write a JUnit XML report here (one test case per gate)"
    ),
    download: Path | None = typer.Option(
        None, "--download", help="when the gates pass, download the student into this folder"
    ),
    formats: list[str] = typer.Option(
        [], "--format", help="artifact format(s) to download (default: all); repeatable"
    ),
    idempotency_key: str | None = typer.Option(
        None,
        "--idempotency-key",
        envvar="DISTILLERY_IDEMPOTENCY_KEY",
        help="resubmitting with the same key returns the same job (use your CI run's id)",
    ),
    cancel_on_timeout: bool = typer.Option(
        False, "--cancel-on-timeout", help="cancel the job when --timeout runs out"
    ),
    poll: float = typer.Option(2.0, "--poll", help="seconds between status checks"),
    server: str = server_option(),
    token: str | None = token_option(),
) -> None:
    """Submit a job; with --wait (implied by --timeout, gates, --junit and --download) follow
    it to the end, judge its gates and download the student.

    Exit codes: 0 passed, 1 job failed or cancelled, 2 invalid spec or request,
    3 a quality gate failed, 4 timed out waiting.
    """
    opts = SubmitOptions(
        spec=spec_path,
        wait=wait or junit_path is not None,
        timeout=timeout,
        poll=poll,
        max_gap=max_gap,
        min_accuracy=min_accuracy,
        download_dir=download,
        formats=formats,
        idempotency_key=idempotency_key,
        cancel_on_timeout=cancel_on_timeout,
    )
    with Distillery(server, token) as client:
        outcome, gates = run(client, opts, lambda line: err.print(escape(line)))
    color = "green" if outcome.exit_code == 0 else "red"
    err.print(f"[{color}]{outcome.result}[/]: {escape(outcome.message)}")
    for line in outcome.errors:
        err.print(f"  {escape(line)}")
    if junit_path is not None:
        junit.write(junit_path, outcome, gates, client.url)
        err.print(f"JUnit report: {junit_path}")
    if as_json:
        typer.echo(json.dumps(outcome.as_json(client.url)))
    elif outcome.job is not None:
        typer.echo(outcome.job.id)
    raise typer.Exit(outcome.exit_code)


def jobs(
    status: str | None = typer.Option(None, "--status", help="only jobs in this state"),
    name: str | None = typer.Option(None, "--name", help="only jobs with this name"),
    limit: int = typer.Option(20, "--limit", help="at most this many, newest first"),
    as_json: bool = typer.Option(False, "--json"),
    server: str = server_option(),
    token: str | None = token_option(),
) -> None:
    """List your project's jobs, newest first."""
    with connected(server, token) as client:
        found = client.jobs(status=status, name=name, limit=limit)
    if as_json:
        typer.echo(json.dumps([j.data for j in found]))
        return
    table = Table("id", "name", "status", "progress", "created", "error", box=None)
    for j in found:
        table.add_row(
            j.id,
            escape(j.name),
            j.status,
            f"{j.progress * 100:.0f}%",
            j.created_at.strftime("%Y-%m-%d %H:%M:%S") if j.created_at else "",
            escape(j.error_code or ""),
        )
    out.print(table)


def status(
    job_id: str = typer.Argument(..., metavar="ID"),
    as_json: bool = typer.Option(False, "--json"),
    server: str = server_option(),
    token: str | None = token_option(),
) -> None:
    """Show a job: state, progress, evaluation, artifacts."""
    with connected(server, token) as client:
        job = client.job(job_id)
    if as_json:
        typer.echo(json.dumps(job.data))
        return
    print_job(job)


def print_job(job: Job) -> None:
    out.print(f"[bold]{escape(job.name)}[/] {job.id}")
    out.print(f"  status    {job.status} ({job.progress * 100:.0f}%, attempts {job.attempts})")
    if job.stage and not job.finished:
        epoch = f", epoch {job.current_epoch}" if job.current_epoch else ""
        out.print(f"  stage     {job.stage}{epoch}")
    if job.error_message:
        out.print(f"  error     {escape(job.error_code or '')}: {escape(job.error_message)}")
    ev = job.evaluation
    if ev is not None:
        teacher = f"teacher {ev.teacher_accuracy:.2f}%  " if ev.has_teacher else "no teacher  "
        against = " (to the dynamic teacher)" if ev.gap_reference == "dynamic_teacher" else ""
        out.print(
            f"  accuracy  {teacher}student {ev.student_accuracy:.2f}%"
            f"  gap {ev.gap:.2f} points{against}"
        )
        if ev.dynamic_teacher_accuracy is not None:
            params = (
                f", {ev.dynamic_teacher_params:,} params"
                if ev.dynamic_teacher_params is not None
                else ""
            )
            out.print(
                f"  dynamic   teacher {ev.dynamic_teacher_accuracy:.2f}%"
                f" (GPD, {ev.dynamic_teacher_ratio}x wider{params})"
            )
        fewer = f" ({ev.compression_ratio:.1f}x fewer)" if ev.compression_ratio is not None else ""
        out.print(
            f"  size      {ev.student_params:,} params{fewer}, "
            f"{ev.student_latency_ms:.3f} ms/batch on CPU"
        )
        out.print(f"  gates     {'passed' if ev.gate_passed else 'FAILED'}")
    for a in job.artifacts:
        out.print(f"  artifact  {a.format:<13} {a.size_bytes:>10} bytes  sha256 {a.sha256[:16]}…")


STAGE_ORDER = {"teacher": 0, "baseline": 1, "distill": 2}


def _stage_epoch(key: tuple[str, int]) -> tuple[int, str, int]:
    """Stages in the order a job runs them, epochs in order within each."""
    return (STAGE_ORDER.get(key[0], len(STAGE_ORDER)), key[0], key[1])


class LogPrinter:
    """Prints a job's events and per-epoch metrics, each once, in the order they appear."""

    def __init__(self, job: Job):
        self.job = job
        self.last_event: int | None = None
        self.epochs_seen: set[tuple[str, int]] = set()

    def update(self) -> None:
        for e in self.job.events(after=self.last_event):
            self.last_event = e.id
            when = e.at.replace("T", " ")[:19]
            out.print(f"{when}  {e.kind:<8} {escape(e.message)}")
        rows: dict[tuple[str, int], dict[str, float]] = {}
        for stage, series in self.job.metrics().items():
            for metric, points in series.items():
                for epoch, value in points:
                    rows.setdefault((stage, epoch), {})[metric] = value
        for key in sorted(set(rows) - self.epochs_seen, key=_stage_epoch):
            self.epochs_seen.add(key)
            values = "  ".join(f"{m}={v:.4g}" for m, v in sorted(rows[key].items()))
            out.print(f"{'':19}  {'metrics':<8} {key[0]} epoch {key[1]}: {values}")


def logs(
    job_id: str = typer.Argument(..., metavar="ID"),
    follow: bool = typer.Option(False, "--follow", "-f", help="keep printing until the job ends"),
    server: str = server_option(),
    token: str | None = token_option(),
) -> None:
    """Print a job's events and per-epoch metrics; --follow streams them as they come."""
    with connected(server, token) as client:
        job = client.job(job_id)
        printer = LogPrinter(job)
        printer.update()
        if not follow or job.finished:
            return
        try:  # the server's event stream says when something changed
            for _name, _data in job.stream():
                printer.update()
        except DistilleryError:
            while not job.refresh().finished:  # the stream broke: poll instead
                printer.update()
                time.sleep(2.0)
        printer.update()


def cancel(
    job_id: str = typer.Argument(..., metavar="ID"),
    server: str = server_option(),
    token: str | None = token_option(),
) -> None:
    """Cancel a job (a running one stops at its next batch)."""
    with connected(server, token) as client:
        job = client.job(job_id).cancel()
    err.print(f"job {job.id}: {job.status}")


def retry(
    job_id: str = typer.Argument(..., metavar="ID"),
    server: str = server_option(),
    token: str | None = token_option(),
) -> None:
    """Queue a failed or cancelled job again (it resumes from its checkpoints)."""
    with connected(server, token) as client:
        job = client.job(job_id).retry()
    err.print(f"job {job.id}: {job.status}")


def delete(
    item_id: str = typer.Argument(..., metavar="ID"),
    upload: bool = typer.Option(False, "--upload", help="ID is an upload, not a job"),
    server: str = server_option(),
    token: str | None = token_option(),
) -> None:
    """Delete a finished job with its artifacts and checkpoints (or, with --upload, an upload);
    a job that has not ended must be cancelled first."""
    with connected(server, token) as client:
        if upload:
            client.delete_upload(item_id)
        else:
            Job(client, {"id": item_id}).delete()
    err.print(f"{'upload' if upload else 'job'} {escape(item_id)}: deleted")


def download(
    job_id: str = typer.Argument(..., metavar="ID"),
    format: str | None = typer.Option(
        None,
        "--format",
        help="torchscript, torch_export, onnx, safetensors, config "
        "(default: the spec's first export format)",
    ),
    output: str | None = typer.Option(
        None,
        "--output",
        "-o",
        help="file, or folder (existing, or ending in /) for the server's file name "
        "[default: the server's file name, here]",
        show_default=False,
    ),
    server: str = server_option(),
    token: str | None = token_option(),
) -> None:
    """Download a job's student; verifies its sha256 and resumes a broken download."""
    with connected(server, token) as client:
        job = client.job(job_id)
        if format is None:
            have = [a.format for a in job.artifacts]
            order = [f for f in job.spec.get("export", []) if f in have] or have
            if not order:
                raise NotFound(404, f"job {job.id} has no artifacts (it is {job.status})", None)
            format = order[0]
        d = job.download(format, output)
    note = " (already there)" if d.skipped else ""
    resumed = f", resumed at byte {d.resumed_from}" if d.resumed_from else ""
    err.print(f"{format}: {d.size_bytes} bytes, sha256 {d.sha256} verified{resumed}{note}")
    typer.echo(str(d.path))


COMMANDS: list[tuple[str, Callable[..., None]]] = [
    ("submit", submit),
    ("jobs", jobs),
    ("status", status),
    ("logs", logs),
    ("cancel", cancel),
    ("retry", retry),
    ("download", download),
    ("delete", delete),
]


def register(app: typer.Typer) -> None:
    for name, fn in COMMANDS:
        app.command(name)(fn)
