"""A live Distillery for the client tests: the API (uvicorn) and one Celery worker as real
processes on loopback, on the session's PostgreSQL database and the real Redis (a queue of their
own), with API keys required. Started once per test session and shared: the tests wait for their
own jobs, so they do not depend on each other's order.

Two projects, "a" and "b", each get a key; webhooks are signed with `WEBHOOK_SECRET` and retried
after 0.2 s. `spec()` is a spec that trains in about a second.
"""

from __future__ import annotations

import contextlib
import copy
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[2]
WEBHOOK_SECRET = "whsec_client_tests"
TINY: dict[str, Any] = {
    "name": "client-tiny",
    "teacher": {"arch": "mlp", "kwargs": {"hidden": [16]}, "train": {"epochs": 2}},
    "student": {"arch": "mlp", "kwargs": {"hidden": [4]}},
    "data": {
        "source": "synthetic",
        "synthetic": {"input_shape": [8], "num_classes": 3, "n_train": 64, "n_val": 32},
    },
    "train": {"epochs": 2, "batch_size": 16},
    "evaluate": {"latency_runs": 1, "latency_batch_size": 4},
    "export": ["onnx", "safetensors"],
}


def spec(**sections: Any) -> dict[str, Any]:
    """The tiny spec with a unique name and whole top-level sections replaced."""
    out = copy.deepcopy(TINY)
    out["name"] = f"client-{uuid.uuid4().hex[:8]}"
    out.update(copy.deepcopy(sections))
    return out


def write_dataset(path: Path, seed: int = 0) -> Path:
    """A small 3-class .npz dataset (x_train, y_train, x_val, y_val)."""
    rng = np.random.default_rng(seed)
    centers = rng.normal(0, 3, size=(3, 8))
    y = rng.integers(0, 3, size=96)
    x = centers[y] + rng.normal(0, 1, size=(96, 8))
    np.savez(path, x_train=x[:64], y_train=y[:64], x_val=x[64:], y_val=y[64:])
    return path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Service:
    url: str
    token_a: str
    token_b: str
    project_a: str
    project_b: str
    logs: list[Path]

    def env(self, token: str | None = None) -> dict[str, str]:
        """Environment for `distill` against this service (project a's key by default)."""
        return {"DISTILLERY_URL": self.url, "DISTILLERY_TOKEN": token or self.token_a}

    def log_tail(self, lines: int = 40) -> str:
        out = []
        for path in self.logs:
            text = path.read_text(errors="replace").splitlines()[-lines:]
            out.append(f"--- {path.name}\n" + "\n".join(text))
        return "\n".join(out)


@pytest.fixture(scope="session")
def service(
    pg_url: str, redis_url: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Service]:
    from store.auth import create_key
    from store.db import make_engine, session_scope

    folder = tmp_path_factory.mktemp("service")
    queue = f"distillery-client-{uuid.uuid4().hex[:8]}"
    suffix = uuid.uuid4().hex[:6]
    projects = (f"team-a-{suffix}", f"team-b-{suffix}")
    engine = make_engine(pg_url)
    with session_scope(engine) as s:
        tokens = [create_key(s, p, "client tests")[1] for p in projects]
    engine.dispose()

    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("DISTILLERY_")}
    env.update(
        DISTILLERY_DATABASE_URL=pg_url,
        DISTILLERY_BROKER_URL=redis_url,
        DISTILLERY_QUEUE=queue,
        DISTILLERY_DATA_DIR=str(folder),
        DISTILLERY_AUTH="keys",
        DISTILLERY_WEBHOOK_SECRET=WEBHOOK_SECRET,
        DISTILLERY_WEBHOOK_BACKOFF_SECONDS="0.2",
        DISTILLERY_WEBHOOK_INLINE_SECONDS="15",
        DISTILLERY_WEBHOOK_ALLOW="127.0.0.1",  # the receivers run on loopback
        DISTILLERY_HEARTBEAT_SECONDS="1",
    )
    py = sys.executable
    commands = {
        "api": [py, "-m", "uvicorn", "api.main:app", "--host", "127.0.0.1", "--port", str(port)],
        "worker": [
            py, "-m", "celery", "-A", "worker.app", "worker", "-Q", queue, "-c", "1",
            "--hostname", f"client-tests-{suffix}@%h", "--loglevel=INFO",
        ],
    }  # fmt: skip
    procs: list[subprocess.Popen[bytes]] = []
    logs = []
    for name, cmd in commands.items():
        log = folder / f"{name}.log"
        logs.append(log)
        with log.open("wb") as out:
            procs.append(
                subprocess.Popen(
                    cmd, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT,
                    stdin=subprocess.DEVNULL, start_new_session=True,
                )
            )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    svc = Service(url, tokens[0], tokens[1], projects[0], projects[1], logs)
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                if httpx.get(f"{url}/readyz", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline or any(p.poll() is not None for p in procs):
                pytest.fail("the service did not start:\n" + svc.log_tail())
            time.sleep(0.2)
        yield svc
    finally:
        for p in procs:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(p.pid, signal.SIGTERM)
        for p in procs:
            try:
                p.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(p.pid, signal.SIGKILL)
                p.wait()
        import redis

        client = redis.Redis.from_url(redis_url)
        for key in client.scan_iter(f"{queue}*"):
            client.delete(key)
        client.close()


class Receiver:
    """A webhook endpoint on 127.0.0.1: answers with the queued `statuses` (then 200) and keeps
    every request (headers, body)."""

    def __init__(self) -> None:
        self.statuses: list[int] = []
        self.requests: list[tuple[dict[str, str], bytes]] = []
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("content-length", 0)))
                receiver.requests.append((dict(self.headers), body))
                self.send_response(receiver.statuses.pop(0) if receiver.statuses else 200)
                self.send_header("content-length", "0")
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def wait_for(self, n: int, timeout: float = 20.0) -> list[tuple[dict[str, str], bytes]]:
        deadline = time.monotonic() + timeout
        while len(self.requests) < n and time.monotonic() < deadline:
            time.sleep(0.1)
        return self.requests

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    r = Receiver()
    yield r
    r.close()
