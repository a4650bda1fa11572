"""A live service for the client-only tests, started from the FULL venv.

The tests run in a venv with only `distillery[client]` (no torch, no service packages), so the
service comes from another one: DISTILLERY_SERVICE_VENV (default: the repository's .venv). Its
`distill keys create` makes a key and its `distill serve` runs the embedded service (SQLite,
filesystem broker, one worker) on loopback in a folder of its own. Nothing here imports more
than the client and httpx.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

ROOT = Path(__file__).resolve().parents[2]
SERVICE_VENV = Path(os.environ.get("DISTILLERY_SERVICE_VENV", ROOT / ".venv"))
#: the `distill` of the venv running these tests: the client-only install under test
CLIENT_DISTILL = Path(sys.executable).parent / "distill"
START_TIMEOUT_S = 120
TINY_SPEC = """\
name: client-only-tiny
teacher: {arch: mlp, kwargs: {hidden: [16]}, train: {epochs: 2}}
student: {arch: mlp, kwargs: {hidden: [4]}}
data:
  source: synthetic
  synthetic: {input_shape: [8], num_classes: 3, n_train: 64, n_val: 32}
train: {epochs: 2, batch_size: 16}
evaluate: {latency_runs: 1, latency_batch_size: 4}
export: [onnx, safetensors]
"""


@dataclass(frozen=True)
class Service:
    url: str
    token: str
    log: Path

    def distill(self, *args: str, token: str | None = None) -> subprocess.CompletedProcess[str]:
        """The client venv's `distill ARGS` against this service (its key, or `token`)."""
        env = {k: v for k, v in os.environ.items() if not k.startswith("DISTILLERY_")}
        env.update(DISTILLERY_URL=self.url, DISTILLERY_TOKEN=token or self.token)
        return subprocess.run(
            [str(CLIENT_DISTILL), *args], env=env, capture_output=True, text=True, timeout=600
        )

    def log_tail(self) -> str:
        return "\n--- serve.log\n" + self.log.read_text(errors="replace")[-3000:]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_ready(url: str, proc: subprocess.Popen[bytes], log: Path) -> None:
    """Until /readyz answers 200; fails at once if `distill serve` exits."""
    deadline = time.monotonic() + START_TIMEOUT_S
    while True:
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(f"{url}/readyz", timeout=2).status_code == 200:
                return
        if proc.poll() is not None or time.monotonic() > deadline:
            pytest.fail("distill serve did not become ready:\n" + log.read_text()[-3000:])
        time.sleep(0.2)


@pytest.fixture(scope="session")
def service(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Service]:
    distill = SERVICE_VENV / "bin" / "distill"
    if not distill.exists():
        pytest.fail(f"no service install at {SERVICE_VENV} (set DISTILLERY_SERVICE_VENV)")
    folder = tmp_path_factory.mktemp("service")
    env = {k: v for k, v in os.environ.items() if not k.startswith("DISTILLERY_")}
    where = ["--data-dir", str(folder / "data")]
    made = subprocess.run(
        [str(distill), "keys", "create", "--project", "client-only", *where],
        cwd=folder, env=env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert made.returncode == 0, made.stderr
    port = free_port()
    log = folder / "serve.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [str(distill), "serve", "--port", str(port), *where],
            cwd=folder, env=env, stdout=out, stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL, start_new_session=True,
        )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    try:
        wait_ready(url, proc, log)
        yield Service(url, made.stdout.strip(), log)
    finally:
        proc.send_signal(signal.SIGTERM)  # serve stops its worker and reconciler with it
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


@pytest.fixture
def spec_file(tmp_path: Path) -> Path:
    path = tmp_path / "tiny.yaml"
    path.write_text(TINY_SPEC)
    return path


@pytest.fixture(scope="session")
def client_distill() -> Path:
    return CLIENT_DISTILL
