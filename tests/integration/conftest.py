"""End-to-end fixtures: the real service as separate processes on loopback.

A `Stack` is one deployment of Distillery for a test module: API processes
(`python -m uvicorn api.main:app`), Celery worker processes
(`python -m celery -A worker.app worker ...`) and optionally the reconciler
(`python -m worker.reconcile_loop`), all configured only through `DISTILLERY_*` environment
variables: a PostgreSQL database of the integration tests' own (`service_db`), the real Redis,
a queue of the stack's own and a data folder (blobs) of its own. Nothing is mocked; tests talk
HTTP with httpx.

Every process runs in a session of its own (so a worker and its pool children can be killed as
one process group) and writes its output to a log file; when a test fails, the tails of the logs
of the stacks alive at that moment are attached to its report. Teardown always stops every
process: SIGTERM to the group, then SIGKILL.
"""

from __future__ import annotations

import contextlib
import copy
import json
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import httpx
import pytest

ROOT = Path(__file__).resolve().parents[2]
PYTHON = sys.executable

# Short timings so that a lost worker is noticed within seconds.
TIMINGS = {
    "DISTILLERY_LEASE_SECONDS": "6",
    "DISTILLERY_HEARTBEAT_SECONDS": "1",
    "DISTILLERY_REQUEUE_AFTER_SECONDS": "30",
    "DISTILLERY_RECONCILE_SECONDS": "1",
}
UPLOAD_LIMIT = 256 * 1024  # the shared API's DISTILLERY_MAX_UPLOAD_BYTES
TERMINAL = ("succeeded", "failed", "cancelled")
START_TIMEOUT_S = 60.0
LOG_TAIL_LINES = 60

_OPEN_STACKS: list[Stack] = []  # the stacks whose logs a failing test report shows


# --- processes ---------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def tail(path: Path, lines: int = LOG_TAIL_LINES) -> str:
    """The last `lines` lines of a log, runs of one repeated line (polling) folded into one."""
    try:
        text = path.read_text(errors="replace")
    except OSError as exc:
        return f"(cannot read {path}: {exc})"
    folded: list[str] = []
    repeats = 0
    for line in [*text.splitlines(), None]:
        if folded and line == folded[-1]:
            repeats += 1
            continue
        if repeats:
            folded.append(f"    (the line above {repeats} more times)")
            repeats = 0
        if line is not None:
            folded.append(line)
    return "\n".join(folded[-lines:])


class Proc:
    """A child process in its own session (its pid is its process group id), output to a log."""

    def __init__(self, name: str, args: list[str], env: dict[str, str], log: Path):
        self.name = name
        self.log = log
        with log.open("ab") as out:
            self.popen = subprocess.Popen(
                args,
                cwd=ROOT,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

    @property
    def pid(self) -> int:
        return self.popen.pid

    def alive(self) -> bool:
        return self.popen.poll() is None

    def signal_group(self, sig: signal.Signals) -> None:
        with contextlib.suppress(ProcessLookupError):  # the whole group may be gone already
            os.killpg(self.pid, sig)

    def kill(self) -> None:
        """SIGKILL the process and everything in its group (a worker's pool children)."""
        self.signal_group(signal.SIGKILL)
        self.popen.wait()

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def check_alive(self, what: str) -> None:
        if not self.alive():
            raise RuntimeError(
                f"{self.name} exited with {self.popen.returncode} while {what}; "
                f"its log ({self.log}):\n{tail(self.log)}"
            )


class Api:
    """An API process and an httpx client for it, with the few calls the tests repeat."""

    def __init__(self, proc: Proc, url: str):
        self.proc = proc
        self.url = url
        self.http = httpx.Client(base_url=url, timeout=httpx.Timeout(30.0))

    def close(self) -> None:
        self.http.close()

    # jobs ---------------------------------------------------------------------------------------

    def submit(self, spec: dict[str, Any]) -> dict[str, Any]:
        r = self.http.post("/v1/jobs", json=spec)
        assert r.status_code == 201, r.text
        return r.json()

    def job(self, job_id: str) -> dict[str, Any]:
        r = self.http.get(f"/v1/jobs/{job_id}")
        assert r.status_code == 200, r.text
        return r.json()

    def events(self, job_id: str) -> list[dict[str, Any]]:
        r = self.http.get(f"/v1/jobs/{job_id}/events")
        assert r.status_code == 200, r.text
        return r.json()["items"]

    def metrics(self, job_id: str) -> dict[str, dict[str, list[list[float]]]]:
        r = self.http.get(f"/v1/jobs/{job_id}/metrics")
        assert r.status_code == 200, r.text
        return r.json()["series"]

    def wait(
        self,
        job_id: str,
        until: Callable[[dict[str, Any]], bool],
        timeout: float,
        what: str,
        poll_s: float = 0.2,
    ) -> dict[str, Any]:
        """Poll GET /v1/jobs/{id} until `until(job)`; fail at once if the job ends otherwise."""
        deadline = time.monotonic() + timeout
        while True:
            job = self.job(job_id)
            if until(job):
                return job
            if job["status"] in TERMINAL:
                raise AssertionError(
                    f"job {job_id} ended {job['status']} while waiting for {what}: "
                    f"{job['error_code']} {job['error_message']}"
                )
            if time.monotonic() > deadline:
                raise AssertionError(
                    f"job {job_id}: no {what} after {timeout:.0f} s; last state: "
                    f"{ {k: job[k] for k in ('status', 'stage', 'current_epoch', 'progress')} }"
                )
            time.sleep(poll_s)

    def wait_status(self, job_id: str, status: str, timeout: float) -> dict[str, Any]:
        return self.wait(job_id, lambda j: j["status"] == status, timeout, f"status {status}")

    def stream(self, job_id: str, timeout: float) -> list[tuple[str, dict[str, Any]]]:
        """Read the job's Server-Sent Events until the server closes the stream."""
        deadline = time.monotonic() + timeout
        events: list[tuple[str, dict[str, Any]]] = []
        name, data = "", []
        with self.http.stream("GET", f"/v1/jobs/{job_id}/stream") as r:
            assert r.status_code == 200, r.read().decode()
            assert r.headers["content-type"].startswith("text/event-stream")
            for line in r.iter_lines():
                if time.monotonic() > deadline:
                    raise AssertionError(f"the stream of job {job_id} ran past {timeout} s")
                if line.startswith("event:"):
                    name = line.removeprefix("event:").strip()
                elif line.startswith("data:"):
                    data.append(line.removeprefix("data:").strip())
                elif not line and data:
                    events.append((name, json.loads("\n".join(data))))
                    name, data = "", []
        return events

    def upload(self, content: bytes, filename: str, kind: str) -> httpx.Response:
        return self.http.post(
            "/v1/uploads",
            data={"kind": kind},
            files={"file": (filename, content, "application/octet-stream")},
        )


class Stack:
    """One deployment: processes sharing a queue, a data folder and the test database."""

    def __init__(self, name: str, folder: Path, db_url: str, redis_url: str):
        self.name = name
        self.folder = folder
        self.redis_url = redis_url
        self.queue = f"distillery-it-{name}-{uuid.uuid4().hex[:8]}"
        self.data_dir = folder / "data"
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.procs: list[Proc] = []
        self.apis: list[Api] = []
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("DISTILLERY_")}
        self.env.update(
            PYTHONUNBUFFERED="1",
            # One torch thread per process: these models are tiny, and on a small machine shared
            # with other processes torch's default (a thread per core, spinning at barriers)
            # makes training an order of magnitude slower whenever another process is busy.
            OMP_NUM_THREADS="1",
            DISTILLERY_DATABASE_URL=db_url,
            DISTILLERY_BROKER_URL=redis_url,
            DISTILLERY_QUEUE=self.queue,
            DISTILLERY_DATA_DIR=str(self.data_dir),
            # No API keys: the tests play one user (ignored by a service without auth).
            DISTILLERY_AUTH="none",
            **TIMINGS,
        )

    def _start(self, name: str, args: list[str], env: dict[str, str] | None = None) -> Proc:
        log = self.folder / f"{name}.log"
        proc = Proc(f"{self.name}/{name}", args, {**self.env, **(env or {})}, log)
        self.procs.append(proc)
        return proc

    def start_api(self, name: str = "api", ready: bool = True, **env: str) -> Api:
        """Start uvicorn and wait for /readyz to answer 200 (or /healthz, when `ready` is
        False: an API whose broker is down never becomes ready)."""
        port = free_port()
        proc = self._start(
            name,
            [
                PYTHON,
                "-m",
                "uvicorn",
                "api.main:app",
                "--host",
                "127.0.0.1",
                "--port",
                str(port),
                "--no-access-log",
            ],
            env,
        )
        api = Api(proc, f"http://127.0.0.1:{port}")
        self.apis.append(api)
        probe = "/readyz" if ready else "/healthz"
        deadline = time.monotonic() + START_TIMEOUT_S
        while True:
            proc.check_alive(f"waiting for {probe}")
            try:
                if api.http.get(probe, timeout=5).status_code == 200:
                    return api
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"{proc.name}: {probe} not 200 after {START_TIMEOUT_S} s")
            time.sleep(0.1)

    def start_worker(self, name: str) -> Proc:
        """Start a Celery worker on the stack's queue and wait until it says it is ready."""
        proc = self._start(
            name,
            [
                PYTHON, "-m", "celery", "-A", "worker.app", "worker",
                "-c", "1", "-Q", self.queue, "--loglevel", "INFO", "--hostname", f"{name}@%h",
            ],
        )  # fmt: skip
        deadline = time.monotonic() + START_TIMEOUT_S
        while " ready." not in proc.output():
            proc.check_alive("starting")
            if time.monotonic() > deadline:
                raise RuntimeError(f"{proc.name}: not ready after {START_TIMEOUT_S} s")
            time.sleep(0.1)
        return proc

    def start_reconciler(self, interval: float = 1.0, **env: str) -> Proc:
        """The reconcile loop; `env` overrides the stack's DISTILLERY_* settings for it."""
        return self._start(
            "reconciler",
            [PYTHON, "-m", "worker.reconcile_loop", "--interval", str(interval)],
            env,
        )

    def log_tails(self) -> str:
        parts = []
        for proc in self.procs:
            state = "running" if proc.alive() else f"exited {proc.popen.returncode}"
            parts.append(f"----- {proc.name} ({state}), {proc.log} -----\n{tail(proc.log)}")
        return "\n".join(parts)

    def cancel_unfinished(self, timeout: float = 15.0) -> None:
        """Leave no job queued or running for another module's reconciler to pick up (they
        share the database): cancel them while this stack's workers still run."""
        api = next((a for a in self.apis if a.proc.alive()), None)
        if api is None:
            return
        try:
            pending = [
                job["id"]
                for status in ("queued", "running", "cancelling")
                for job in api.http.get("/v1/jobs", params={"status": status}).json()["items"]
            ]
            for job_id in pending:
                api.http.post(f"/v1/jobs/{job_id}/cancel")
            deadline = time.monotonic() + timeout
            while pending and time.monotonic() < deadline:
                pending = [j for j in pending if api.job(j)["status"] not in TERMINAL]
                time.sleep(0.2)
        except (httpx.HTTPError, AssertionError, KeyError):
            pass  # best effort: teardown goes on regardless

    def close(self) -> None:
        """Stop everything: SIGTERM to every process group, then SIGKILL what is left."""
        try:
            self.cancel_unfinished()
        finally:
            for api in self.apis:
                api.close()
            for proc in self.procs:
                if proc.alive():
                    proc.signal_group(signal.SIGTERM)
            deadline = time.monotonic() + 10
            for proc in self.procs:
                with contextlib.suppress(subprocess.TimeoutExpired):
                    proc.popen.wait(timeout=max(deadline - time.monotonic(), 0.1))
                proc.kill()  # also any child left behind by a leader that exited
            self._clean_redis()

    def _clean_redis(self) -> None:
        """Delete the queue's keys, and delivered-but-unacknowledged messages of this queue that
        a SIGKILLed worker left in kombu's `unacked` hash."""
        import redis

        client = redis.Redis.from_url(self.redis_url)
        try:
            for key in client.scan_iter(f"*{self.queue}*"):
                client.delete(key)
            for tag, raw in client.hgetall("unacked").items():
                try:
                    routing_key = json.loads(raw)[2]
                except (ValueError, IndexError, TypeError):
                    continue
                if routing_key == self.queue:
                    client.hdel("unacked", tag)
                    client.zrem("unacked_index", tag)
        except redis.RedisError:
            pass
        finally:
            client.close()


class Locks:
    """The test's own connections to the service's database, to hold a lock that a service process
    will wait on: a worker is stopped at a chosen point of its work by a state (its statement
    waits on the test's lock), never by timing a signal."""

    def __init__(self, db_url: str):
        from sqlalchemy import create_engine

        self.engine = create_engine(db_url)

    def close(self) -> None:
        self.engine.dispose()

    def waiting_on(self, holder: int, statement: str) -> list[int]:
        """Backends running `statement` (an SQL prefix, e.g. `UPDATE jobs`) that wait on locks of
        backend `holder`; asked on a connection of its own, since a transaction keeps one
        snapshot of pg_stat_activity."""
        from sqlalchemy import text

        with self.engine.connect() as conn:
            rows = conn.execute(
                text(
                    "SELECT pid FROM pg_stat_activity WHERE query ILIKE :statement"
                    " AND :holder = ANY(pg_blocking_pids(pid))"
                ),
                {"holder": holder, "statement": f"{statement}%"},
            )
            return [int(pid) for (pid,) in rows]

    def wait_until_waiting(
        self, holder: int, statement: str, proc: Proc, timeout: float = START_TIMEOUT_S * 2
    ) -> list[int]:
        """Wait until a backend runs `statement` and waits on `holder`; fail if `proc` exits."""
        deadline = time.monotonic() + timeout
        while not (pids := self.waiting_on(holder, statement)):
            proc.check_alive(f"waited on for {statement!r}")
            if time.monotonic() > deadline:
                raise AssertionError(f"no {statement!r} waiting on the test's lock in {timeout} s")
            time.sleep(0.1)
        return pids

    def terminate(self, pids: list[int]) -> None:
        """End backends whose client is gone (a SIGKILLed worker's): what they did never commits."""
        from sqlalchemy import text

        with self.engine.connect() as conn:
            for pid in pids:
                conn.execute(text("SELECT pg_terminate_backend(:pid)"), {"pid": pid})


# --- fixtures ----------------------------------------------------------------------------------


def _reachable(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=2):
            return True
    except OSError:
        return False


PG_ADMIN_URL = os.environ.get(
    "DISTILLERY_TEST_PG", "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"
)


@pytest.fixture(scope="session")
def service_db(redis_url: str) -> Iterator[str]:
    """A migrated PostgreSQL database for the integration tests alone (dropped afterwards).

    Not the shared `pg_url`: other tests leave jobs queued or running there, and a reconciler
    started here would re-enqueue them onto these tests' workers. Skips the integration tests
    when PostgreSQL or Redis is not reachable at all."""
    from sqlalchemy import create_engine, text

    from store.db import upgrade_schema

    pg, redis = urlparse(PG_ADMIN_URL), urlparse(redis_url)
    for what, host, port in (
        ("PostgreSQL", pg.hostname or "127.0.0.1", pg.port or 5432),
        ("Redis", redis.hostname or "127.0.0.1", redis.port or 6379),
    ):
        if not _reachable(host, port):
            pytest.skip(f"{what} is not reachable on {host}:{port}")

    name = f"distillery_it_{uuid.uuid4().hex[:12]}"
    admin = create_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    url = PG_ADMIN_URL.rsplit("/", 1)[0] + f"/{name}"
    try:
        upgrade_schema(url)
        yield url
    finally:
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


@pytest.fixture(scope="module")
def stacks(
    service_db: str, redis_url: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Callable[[str], Stack]]:
    """`stacks(name)`: a new Stack; all of them are torn down at the end of the module."""
    made: list[Stack] = []

    def make(name: str) -> Stack:
        stack = Stack(name, tmp_path_factory.mktemp(f"stack-{name}"), service_db, redis_url)
        made.append(stack)
        _OPEN_STACKS.append(stack)
        return stack

    try:
        yield make
    finally:
        errors = []
        for stack in reversed(made):  # every one, even if closing another failed
            try:
                stack.close()
            except Exception as exc:
                errors.append(exc)
            finally:
                _OPEN_STACKS.remove(stack)
        if errors:
            raise errors[0]


@pytest.fixture(scope="module")
def service(stacks: Callable[[str], Stack]) -> Stack:
    """The shared deployment: one API (uploads limited to UPLOAD_LIMIT bytes) and one worker."""
    stack = stacks("main")
    stack.start_api(DISTILLERY_MAX_UPLOAD_BYTES=str(UPLOAD_LIMIT))
    stack.start_worker("w1")
    return stack


@pytest.fixture
def locks(service_db: str) -> Iterator[Locks]:
    """Connections of the test's own to the service's database (see Locks)."""
    made = Locks(service_db)
    try:
        yield made
    finally:
        made.close()


#: A job that trains in about a second (teacher trained in the job, one epoch each).
TINY_JOB: dict[str, Any] = {
    "name": "it-tiny",
    "teacher": {"arch": "mlp", "kwargs": {"hidden": [16]}, "train": {"epochs": 1}},
    "student": {"arch": "mlp", "kwargs": {"hidden": [4]}},
    "data": {
        "source": "synthetic",
        "synthetic": {"input_shape": [8], "num_classes": 3, "n_train": 64, "n_val": 32},
    },
    "train": {"epochs": 1, "batch_size": 16},
    "evaluate": {"latency_runs": 1},
    "export": ["safetensors"],
}


@pytest.fixture
def tiny_job() -> dict[str, Any]:
    """A copy of TINY_JOB (conftest is not importable from the test modules)."""
    return copy.deepcopy(TINY_JOB)


@pytest.fixture
def api(service: Stack) -> Api:
    return service.apis[0]


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[None]:
    """Attach the service processes' log tails to the report of a failing test."""
    outcome = yield
    report = outcome.get_result()  # type: ignore[attr-defined]
    if report.failed and _OPEN_STACKS:
        text = "\n".join(stack.log_tails() for stack in _OPEN_STACKS)
        report.sections.append((f"service logs (last {LOG_TAIL_LINES} lines each)", text))
