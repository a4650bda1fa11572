"""`distill serve`: the embedded service (SQLite, filesystem broker, no servers) runs a job end
to end, and stopping it stops its worker and reconciler too."""

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


def test_serve_runs_a_job_and_stops_cleanly(tmp_path: Path) -> None:
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("DISTILLERY_")}
    log = (tmp_path / "serve.log").open("w")
    distill = Path(sys.executable).parent / "distill"
    proc = subprocess.Popen(
        [str(distill), "serve", "--port", str(port)],
        cwd=tmp_path,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + 60
        while time.time() < deadline:
            try:
                if httpx.get(f"{url}/readyz", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.3)
        else:
            pytest.fail(
                "distill serve never became ready:\n" + (tmp_path / "serve.log").read_text()
            )
        job = httpx.post(f"{url}/v1/jobs", json=TINY, timeout=30).json()
        deadline = time.time() + 120
        while time.time() < deadline:
            job = httpx.get(f"{url}/v1/jobs/{job['id']}", timeout=10).json()
            if job["status"] in ("succeeded", "failed", "cancelled"):
                break
            time.sleep(0.3)
        assert job["status"] == "succeeded", (tmp_path / "serve.log").read_text()[-3000:]
        onnx = httpx.get(f"{url}/v1/jobs/{job['id']}/artifacts/onnx", timeout=30)
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
