"""`distill serve`: the embedded service (SQLite, filesystem broker, no servers) runs a job end
to end with an API key made by `distill keys create`, and stopping it stops its worker and
reconciler too; only `--no-auth` lets requests in without a key, and it says so."""

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import onnxruntime
import psutil
import pytest

TINY = {
    "name": "embedded-tiny",
    "teacher": {"arch": "mlp", "kwargs": {"hidden": [16]}, "train": {"epochs": 1}},
    "student": {"arch": "mlp", "kwargs": {"hidden": [8]}},
    "data": {"source": "digits"},
    "train": {"epochs": 1},
    "evaluate": {"latency_runs": 1},
    "export": ["onnx"],
}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


DISTILL = Path(sys.executable).parent / "distill"


def wait_ready(url: str, log: Path) -> None:
    deadline = time.time() + 60
    while time.time() < deadline:
        try:
            if httpx.get(f"{url}/readyz", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            time.sleep(0.3)
    pytest.fail("distill serve never became ready:\n" + log.read_text())


def test_serve_runs_a_job_and_stops_cleanly(tmp_path: Path) -> None:
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("DISTILLERY_")}
    made = subprocess.run(
        [str(DISTILL), "keys", "create", "--project", "local"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert made.returncode == 0, made.stderr
    key = made.stdout.strip()
    auth = {"Authorization": f"Bearer {key}"}
    log = (tmp_path / "serve.log").open("w")
    proc = subprocess.Popen(
        [str(DISTILL), "serve", "--port", str(port)],
        cwd=tmp_path,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_ready(url, tmp_path / "serve.log")
        assert httpx.post(f"{url}/v1/jobs", json=TINY, timeout=30).status_code == 401
        job = httpx.post(f"{url}/v1/jobs", json=TINY, headers=auth, timeout=30).json()
        deadline = time.time() + 120
        while time.time() < deadline:
            job = httpx.get(f"{url}/v1/jobs/{job['id']}", headers=auth, timeout=10).json()
            if job["status"] in ("succeeded", "failed", "cancelled"):
                break
            time.sleep(0.3)
        assert job["status"] == "succeeded", (tmp_path / "serve.log").read_text()[-3000:]
        onnx = httpx.get(f"{url}/v1/jobs/{job['id']}/artifacts/onnx", headers=auth, timeout=30)
        assert onnx.status_code == 200
        session = onnxruntime.InferenceSession(onnx.content)
        assert session.get_outputs()[0].shape[-1] == 10  # a 10-way digits student
        assert (tmp_path / "distillery-data" / "distillery.db").exists()
        children = psutil.Process(proc.pid).children(recursive=True)
        assert len(children) >= 2  # the worker (and its pool) and the reconciler
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=60)
        log.close()
    _gone, alive = psutil.wait_procs(children, timeout=30)
    assert alive == [], f"left running: {alive}"


def test_serve_without_keys_only_when_asked_and_says_so(tmp_path: Path) -> None:
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("DISTILLERY_")}
    env["DISTILLERY_AUTH"] = "keys"  # the flag decides, not the environment
    log_path = tmp_path / "serve.log"
    with log_path.open("w") as log:
        proc = subprocess.Popen(
            [str(DISTILL), "serve", "--port", str(port), "--no-auth"],
            cwd=tmp_path,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        try:
            url = f"http://127.0.0.1:{port}"
            wait_ready(url, log_path)
            assert httpx.get(f"{url}/v1/jobs", timeout=10).status_code == 200
        finally:
            proc.send_signal(signal.SIGTERM)
            proc.wait(timeout=60)
    text = log_path.read_text()
    assert "WARNING: authentication is OFF (--no-auth)" in text
    assert "anyone who can reach" in text
