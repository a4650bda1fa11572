"""`distill submit` as a function: submit, wait, gate, download, and say how it ended.

Kept apart from the command-line layer so the whole CI flow is one call returning an `Outcome`
(exit code, JSON, JUnit are all derived from it). Every path ends in an Outcome; nothing here
exits or prints except through `say`.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from client.errors import (
    ApiError,
    Conflict,
    DistilleryError,
    InvalidRequest,
    NotFound,
    Unauthorized,
    WaitTimeout,
)
from client.gates import describe, effective_gates, judge
from client.outcome import Outcome
from client.sdk import Distillery, Job
from client.specfile import read_spec

CONFIG_FORMAT = "config"  # the architecture sidecar that safetensors weights need


@dataclass
class SubmitOptions:
    spec: Path
    wait: bool = False
    timeout: float | None = None
    poll: float = 2.0
    max_gap: float | None = None
    min_accuracy: float | None = None
    download_dir: Path | None = None
    formats: list[str] = field(default_factory=list)  # empty: every artifact
    idempotency_key: str | None = None
    cancel_on_timeout: bool = False

    @property
    def needs_result(self) -> bool:
        """A timeout, gates and downloads need the finished job: they imply --wait."""
        return bool(
            self.wait
            or self.timeout is not None
            or self.max_gap is not None
            or self.min_accuracy is not None
            or self.download_dir is not None
        )


def gate_names(spec: dict[str, Any] | None, opts: SubmitOptions) -> list[str]:
    """The gates that will be judged, known before the job ends (for the JUnit report)."""
    try:
        gates = effective_gates(spec or {}, opts.max_gap, opts.min_accuracy)
    except ValidationError:
        gates = effective_gates({}, opts.max_gap, opts.min_accuracy)
    return [name for name, value in gates.model_dump().items() if value is not None]


def progress_printer(say: Callable[[str], None]) -> Callable[[Job], None]:
    """A `Job.wait` callback printing one line whenever status, stage or epoch changes (plain
    lines, so CI logs read well)."""
    last: list[Any] = [None]
    start = time.monotonic()

    def show(job: Job) -> None:
        key = (job.status, job.stage, job.current_epoch)
        if key == last[0]:
            return
        last[0] = key
        parts = [f"[{time.monotonic() - start:5.0f}s]", job.status]
        if job.stage and not job.finished:
            parts.append(job.stage)
        if job.current_epoch is not None and not job.finished:
            parts.append(f"epoch {job.current_epoch}")
        parts.append(f"{job.progress * 100:.0f}%")
        say("  " + "  ".join(parts))

    return show


def _refused(exc: ApiError) -> Outcome:
    if isinstance(exc, InvalidRequest):
        return Outcome(
            "invalid",
            "the spec or request was refused",
            errors=[str(e) for e in exc.errors] or [exc.detail],
        )
    return Outcome("invalid", exc.detail)


def run(
    client: Distillery, opts: SubmitOptions, say: Callable[[str], None]
) -> tuple[Outcome, list[str]]:
    """Submit (and, when asked, wait, gate and download); returns the outcome and the names of
    the gates it judged or would have judged."""
    start = time.monotonic()
    spec: dict[str, Any] | None = None
    try:
        spec = read_spec(opts.spec)
        job = client.submit(
            spec, idempotency_key=opts.idempotency_key, base_dir=opts.spec.resolve().parent
        )
    except (InvalidRequest, Unauthorized, NotFound, Conflict) as exc:
        out = _refused(exc)
        out.elapsed_s = time.monotonic() - start
        return out, gate_names(spec, opts)
    except DistilleryError as exc:
        return Outcome("error", str(exc), elapsed_s=time.monotonic() - start), gate_names(
            spec, opts
        )
    names = gate_names(job.spec or spec, opts)
    if job.replayed:
        say(
            f"job {job.id} ({job.name}) was submitted before with this idempotency key; "
            f"it is {job.status}"
        )
    else:
        say(f"submitted job {job.id} ({job.name})")
    if not opts.needs_result:
        return Outcome("submitted", f"job {job.id} submitted", job=job), names

    def done(result: str, message: str, **extra: Any) -> tuple[Outcome, list[str]]:
        return (
            Outcome(result, message, job=job, elapsed_s=time.monotonic() - start, **extra),
            names,
        )

    try:
        job.wait(timeout=opts.timeout, poll=opts.poll, on_update=progress_printer(say))
    except WaitTimeout:
        message = f"job {job.id} is still {job.status} after {opts.timeout:g} s"
        if opts.cancel_on_timeout:
            try:
                job.cancel()
                message += "; cancel requested"
            except DistilleryError as exc:
                message += f"; cancelling it failed: {exc}"
        else:
            message += f"; it keeps running (distill cancel {job.id} stops it)"
        return done("timeout", message)
    except DistilleryError as exc:
        return done("error", f"lost track of job {job.id}: {exc}")

    if job.status in ("failed", "cancelled"):
        reason = job.error_message or "no reason recorded"
        code = f" ({job.error_code})" if job.error_code else ""
        return done(job.status, f"job {job.id} {job.status}{code}: {reason}")
    ev = job.evaluation
    if ev is None:
        return done("error", f"job {job.id} succeeded but has no evaluation")
    gates = effective_gates(job.spec, opts.max_gap, opts.min_accuracy)
    verdict = judge(gates, ev.gap, ev.student_accuracy)
    say(ev.describe())
    for check in verdict["checks"]:
        say("  gate " + describe(check))
    if not verdict["passed"]:
        failed = [c["name"] for c in verdict["checks"] if not c["passed"]]
        return done("gate_failed", f"quality gate failed: {', '.join(failed)}", gates=verdict)
    downloaded: list[str] = []
    if opts.download_dir is not None:
        try:
            downloaded = download_all(job, opts.download_dir, opts.formats, say)
        except DistilleryError as exc:
            return done("error", f"download failed: {exc}", gates=verdict)
    return done("passed", f"job {job.id} passed", gates=verdict, downloaded=downloaded)


def download_all(
    job: Job, folder: Path, formats: list[str], say: Callable[[str], None]
) -> list[str]:
    """Download the job's artifacts in `formats` (all when empty; safetensors brings its
    config sidecar) into `folder`; returns the paths."""
    have = [a.format for a in job.artifacts]
    wanted = list(formats) or have
    if "safetensors" in wanted and CONFIG_FORMAT in have and CONFIG_FORMAT not in wanted:
        wanted.append(CONFIG_FORMAT)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for fmt in wanted:
        d = job.download(fmt, folder)
        note = " (already there)" if d.skipped else ""
        say(f"  downloaded {fmt}: {d.path} ({d.size_bytes} bytes, sha256 {d.sha256[:12]}…){note}")
        paths.append(str(d.path))
    return paths
