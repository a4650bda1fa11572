"""Failure drills against a real stack on loopback: what an operator's bad day does to jobs.

Starts the service as separate processes (the integration tests' `Stack`: uvicorn, Celery
workers, the reconciler loop) on a fresh PostgreSQL database, the real Redis and a queue of its
own, then runs each drill, bounded in time, and prints one table:

  kill mid-epoch        SIGKILL a worker's process group while a job trains (epoch ≥ 2), start
                        a new worker: the job must resume from its checkpoint and succeed
  kill before claim     the worker is killed right after the broker delivered the message and
                        before the job was claimed (the message sits in kombu's `unacked` hash
                        of a dead consumer): the reconciler must re-enqueue it
  broker flush          queued jobs whose messages are deleted from Redis: re-enqueued
  duplicate delivery    the same job id sent several more times: it runs once
  cancelled backlog     N queued jobs cancelled, then one new job: seconds until it runs
  fuzz                  schemathesis against the live API for a few seconds: no 5xx

Columns: trials, recovered (succeeded as it should), lost (did not end as it should by the
deadline), duplicated (ran to success more than once, or recomputed a finished epoch), 5xx.

    .venv/bin/python bench/drills.py [--trials 3] [--cancelled 1000] [--fuzz-seconds 60]

Everything it made is removed at the end (database dropped, queue keys deleted).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

import httpx
import redis
from sqlalchemy import create_engine, text

ROOT = Path(__file__).resolve().parent.parent
TERMINAL = ("succeeded", "failed", "cancelled")


def _integration_stack() -> ModuleType:
    """The integration tests' Stack (one implementation of "start the service for real")."""
    path = ROOT / "tests" / "integration" / "conftest.py"
    spec = importlib.util.spec_from_file_location("integration_stack", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


STACK = _integration_stack()


@dataclass
class Row:
    drill: str
    trials: int = 0
    recovered: int = 0
    lost: int = 0
    duplicated: int = 0
    errors_5xx: int = 0
    notes: list[str] = field(default_factory=list)

    def judge(self, api: Any, job_id: str, duplicated: Callable[[dict[str, Any]], bool]) -> None:
        """Wait for the job to end: recovered if it succeeded (and `duplicated(job)` says
        whether it ran more than once), lost otherwise or at the deadline."""
        final = ended(api, job_id, timeout=300)
        if final is None or final["status"] != "succeeded":
            self.lost += 1
            self.notes.append(lost_note(api, job_id))
            return
        self.recovered += 1
        self.duplicated += ran_more_than_once(api, job_id) or duplicated(final)


def spec(name: str, epochs: int = 2, n_train: int = 256) -> dict[str, Any]:
    """A small job; `epochs` and `n_train` set how long the distill stage runs."""
    return {
        "name": name,
        "teacher": {"arch": "mlp", "kwargs": {"hidden": [16]}, "train": {"epochs": 1}},
        "student": {"arch": "mlp", "kwargs": {"hidden": [8]}},
        "data": {
            "source": "synthetic",
            "synthetic": {"input_shape": [16], "num_classes": 4, "n_train": n_train, "n_val": 64},
        },
        "train": {"epochs": epochs, "batch_size": 8},
        "evaluate": {"latency_runs": 1, "latency_batch_size": 4},
        "export": ["safetensors"],
    }


def lost_note(api: Any, job_id: str) -> str:
    job = api.job(job_id)
    return f"{job_id[:8]} {job['status']} {job['error_code'] or ''} {job['error_message'] or ''}"


def wait_for(check: Callable[[], bool], timeout: float, poll: float = 0.05) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return True
        time.sleep(poll)
    return False


def ended(api: Any, job_id: str, timeout: float) -> dict[str, Any] | None:
    """The job once it reached a terminal state, or None at the deadline."""
    found: dict[str, Any] = {}

    def done() -> bool:
        found.update(api.job(job_id))
        return found["status"] in TERMINAL

    return found if wait_for(done, timeout, poll=0.2) else None


def ran_more_than_once(api: Any, job_id: str) -> bool:
    """The job reached `succeeded` more than once (two workers ran it to the end)."""
    events = api.events(job_id)
    return sum(e["kind"] == "status" and e["status"] == "succeeded" for e in events) > 1


def finished_epochs(api: Any, job_id: str) -> int:
    """Distill epochs whose metrics (written at each epoch end, after its checkpoint) exist."""
    series = api.metrics(job_id).get("distill", {}).get("train_loss", [])
    return max((int(epoch) for epoch, _ in series), default=0)


def resumed_from(api: Any, job_id: str) -> list[int]:
    """The checkpoint epochs the distill stage resumed from, one per resumed attempt."""
    return [
        e["data"]["resumed_from_epoch"]
        for e in api.events(job_id)
        if e["kind"] == "stage"
        and (e["data"] or {}).get("stage") == "distill"
        and "resumed from" in e["message"]
    ]


def unacked_for(client: redis.Redis, queue: str) -> list[str]:
    """Delivery tags of this queue's delivered, unacknowledged messages."""
    tags = []
    for tag, raw in client.hgetall("unacked").items():
        try:
            if json.loads(raw)[2] == queue:
                tags.append(tag.decode())
        except (ValueError, IndexError, TypeError):
            continue
    return tags


# --- the drills ------------------------------------------------------------------------------


def kill_mid_epoch(stack: Any, trials: int) -> Row:
    row, api = Row("kill mid-epoch"), stack.apis[0]
    for i in range(trials):
        row.trials += 1
        worker = stack.start_worker(f"mid{i}")
        job = api.submit(spec(f"mid-{i}", epochs=6, n_train=2048))["id"]
        training = wait_for(
            lambda job=job: (
                (j := api.job(job))["stage"] == "distill" and (j["current_epoch"] or 0) >= 2
            ),
            timeout=300,
        )
        worker.kill()
        done_at_kill = finished_epochs(api, job)
        if not training:
            row.notes.append(f"trial {i}: never reached epoch 2")
        stack.start_worker(f"mid{i}b")
        # duplicated also when a finished epoch trained again (resumed before its checkpoint)
        row.judge(
            api,
            job,
            lambda _, job=job, done=done_at_kill: any(k < done for k in resumed_from(api, job)),
        )
        stop_workers(stack)
    return row


def kill_before_claim(stack: Any, trials: int, client: redis.Redis) -> Row:
    row, api = Row("kill before claim"), stack.apis[0]
    missed = 0
    for i in range(trials):
        row.trials += 1
        job = api.submit(spec(f"claim-{i}"))["id"]
        worker = spawn_worker(stack, f"claim{i}")  # no waiting for "ready": the race is now
        delivered = wait_for(
            lambda: bool(unacked_for(client, stack.queue)), timeout=120, poll=0.002
        )
        worker.kill()
        if not delivered or api.job(job)["status"] != "queued":
            missed += 1  # the window was missed: still a kill, still must recover
        stack.start_worker(f"claim{i}b")
        row.judge(api, job, lambda _: False)
        stop_workers(stack)
    if missed:
        row.notes.append(f"{missed} kills came after the claim")
    return row


def broker_flush(stack: Any, trials: int, client: redis.Redis) -> Row:
    row, api = Row("broker flush"), stack.apis[0]
    jobs = [api.submit(spec(f"flush-{i}"))["id"] for i in range(trials)]
    for key in client.scan_iter(f"*{stack.queue}*"):
        client.delete(key)
    stack.start_worker("flush")
    for job in jobs:
        row.trials += 1
        row.judge(api, job, lambda _: False)
    stop_workers(stack)
    return row


def duplicate_delivery(stack: Any, trials: int, copies: int = 3) -> Row:
    from store.queue import enqueue, make_celery
    from store.settings import Settings

    row, api = Row("duplicate delivery"), stack.apis[0]
    settings = Settings(broker_url=stack.env["DISTILLERY_BROKER_URL"], queue=stack.queue)
    app = make_celery(settings)
    stack.start_worker("dup")
    for i in range(trials):
        row.trials += 1
        job = api.submit(spec(f"dup-{i}"))["id"]
        for _ in range(copies):
            enqueue(job, 600, app=app)
        row.judge(api, job, lambda final: final["attempts"] != 1)
    stop_workers(stack)
    return row


def cancelled_backlog(stack: Any, count: int) -> Row:
    row, api = Row("cancelled backlog"), stack.apis[0]
    ids: list[str] = []
    lock = threading.Lock()

    def submit_and_cancel(k: int) -> None:
        with httpx.Client(base_url=api.url, timeout=30) as http:
            for n in range(k, count, 8):
                r = http.post("/v1/jobs", json=spec(f"backlog-{n}"))
                if r.status_code >= 500:
                    row.errors_5xx += 1
                job_id = r.json()["id"]
                if http.post(f"/v1/jobs/{job_id}/cancel").status_code >= 500:
                    row.errors_5xx += 1
                with lock:
                    ids.append(job_id)

    threads = [threading.Thread(target=submit_and_cancel, args=(k,)) for k in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    fresh = api.submit(spec("after-backlog"))["id"]
    started = time.monotonic()
    stack.start_worker("backlog")
    row.trials = 1
    running = wait_for(lambda: api.job(fresh)["status"] != "queued", timeout=3600, poll=0.2)
    waited = time.monotonic() - started
    final = ended(api, fresh, timeout=300) if running else None
    if final is not None and final["status"] == "succeeded":
        row.recovered = 1
    else:
        row.lost = 1
    row.notes.append(f"{len(ids)} cancelled; the new job started {waited:.1f} s after the worker")
    stop_workers(stack)
    return row


def fuzz(stack: Any, seconds: float) -> Row:
    """schemathesis against the live API; a 5xx is a failed `not_a_server_error` check."""
    row, api = Row("fuzz (schemathesis)"), stack.apis[0]
    exe = shutil.which("schemathesis", path=str(Path(sys.executable).parent))
    if exe is None:
        row.notes.append("schemathesis is not installed (pip install -e '.[dev]')")
        return row
    cmd = [
        exe, "run", f"{api.url}/openapi.json", "--checks", "not_a_server_error",
        "--max-time", str(int(seconds)),
    ]  # fmt: skip
    try:  # its own time budget ends the run with a summary; the timeout is only a backstop
        out = subprocess.run(
            cmd, capture_output=True, text=True, timeout=seconds + 120, check=False
        )
        text_out, finished = out.stdout + out.stderr, True
    except subprocess.TimeoutExpired as exc:
        raw = (exc.stdout or b"") + (exc.stderr or b"")
        text_out = raw.decode(errors="replace") if isinstance(raw, bytes) else str(raw)
        finished = False
    row.trials = 1
    failures = text_out.count("Server error")
    row.errors_5xx = failures
    row.recovered = int(failures == 0)
    requests = re.search(r"(\d+) generated", text_out)
    done = f"{requests.group(1)} cases in {seconds:.0f} s" if requests else f"{seconds:.0f} s"
    row.notes.append(done if finished else f"killed after {seconds + 120:.0f} s")
    return row


# --- the stack --------------------------------------------------------------------------------


def spawn_worker(stack: Any, name: str) -> Any:
    """A worker process started without waiting for it to say it is ready."""
    return stack._start(
        name,
        [
            sys.executable, "-m", "celery", "-A", "worker.app", "worker",
            "-c", "1", "-Q", stack.queue, "--loglevel", "INFO", "--hostname", f"{name}@%h",
        ],
    )  # fmt: skip


def stop_workers(stack: Any) -> None:
    """Stop every worker (the API and the reconciler keep running)."""
    for proc in stack.procs:
        if proc.alive() and "celery" in proc.popen.args:
            proc.kill()


@contextmanager
def database() -> Iterator[str]:
    name = f"distillery_drill_{uuid.uuid4().hex[:12]}"
    admin = create_engine(STACK.PG_ADMIN_URL, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    url = STACK.PG_ADMIN_URL.rsplit("/", 1)[0] + f"/{name}"
    try:
        from store.db import upgrade_schema

        upgrade_schema(url)
        yield url
    finally:
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=3)
    parser.add_argument("--cancelled", type=int, default=1000)
    parser.add_argument("--fuzz-seconds", type=float, default=60.0)
    parser.add_argument("--redis", default="redis://127.0.0.1:6379/0")
    parser.add_argument("--only", nargs="*", help="drill names (default: all)", default=None)
    args = parser.parse_args()

    sys.path.insert(0, str(ROOT))
    rows: list[Row] = []
    client = redis.Redis.from_url(args.redis)
    with database() as db_url, tempfile.TemporaryDirectory() as folder:
        stack = STACK.Stack("drills", Path(folder), db_url, args.redis)
        try:
            stack.start_api()
            stack.start_reconciler()
            drills: dict[str, Callable[[], Row]] = {
                "mid-epoch": lambda: kill_mid_epoch(stack, args.trials),
                "before-claim": lambda: kill_before_claim(stack, args.trials, client),
                "flush": lambda: broker_flush(stack, args.trials, client),
                "duplicate": lambda: duplicate_delivery(stack, args.trials),
                "backlog": lambda: cancelled_backlog(stack, args.cancelled),
                "fuzz": lambda: fuzz(stack, args.fuzz_seconds),
            }
            for name, drill in drills.items():
                if args.only is None or name in args.only:
                    rows.append(drill())
        finally:
            stack.close()
    print_table(rows)


def print_table(rows: list[Row]) -> None:
    head = f"{'drill':<22}{'trials':>7}{'recovered':>10}{'lost':>6}{'duplicated':>11}{'5xx':>5}"
    print(head)
    print("-" * len(head))
    for r in rows:
        print(
            f"{r.drill:<22}{r.trials:>7}{r.recovered:>10}{r.lost:>6}{r.duplicated:>11}"
            f"{r.errors_5xx:>5}  {'; '.join(r.notes)}"
        )


if __name__ == "__main__":
    main()
