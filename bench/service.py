"""The service's own cost: submit-to-finish time of a small job minus its training time, and how
many job submissions per second the API takes.

Starts a real stack on this machine: a fresh PostgreSQL database, Redis, the API under uvicorn
and one Celery worker process, then
  1. submits the digits example N times (one after the other), follows each to `succeeded` by
     polling GET /v1/jobs/{id} every 50 ms, and prints wall time, the job's own timings total
     (data, teacher, baseline, distillation, evaluation, export: measured inside the worker) and
     the difference: queueing, claim, process start, imports, artifact upload, DB writes;
  2. stops the worker and POSTs small specs from 8 client threads for a few seconds: each
     request validates the spec, writes the job and its event, and enqueues on Redis.
Everything it made is removed at the end (database dropped, queue keys deleted).

    .venv/bin/python bench/service.py [--jobs 3] [--seconds 10]
"""

from __future__ import annotations

import argparse
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

import httpx
import redis
import yaml
from sqlalchemy import create_engine, text

ROOT = Path(__file__).resolve().parent.parent
PG_ADMIN = os.environ.get(
    "DISTILLERY_TEST_PG", "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"
)
REDIS = os.environ.get("DISTILLERY_TEST_REDIS", "redis://127.0.0.1:6379/0")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_ready(url: str, timeout: float = 60) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            if httpx.get(f"{url}/readyz", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise RuntimeError("the API did not become ready")


def digits_spec() -> dict:
    spec = yaml.safe_load((ROOT / "examples" / "digits-kd.yaml").read_text())
    spec["export"] = ["torchscript", "onnx", "safetensors"]
    return spec


def follow(client: httpx.Client, job_id: str, timeout: float = 600) -> dict:
    deadline = time.time() + timeout
    while time.time() < deadline:
        job = client.get(f"/v1/jobs/{job_id}").json()
        if job["status"] in ("succeeded", "failed", "cancelled"):
            return job
        time.sleep(0.05)
    raise RuntimeError(f"job {job_id} did not finish")


def overhead(client: httpx.Client, runs: int) -> None:
    print(f"{'run':>3} {'submit→finish s':>16} {'training s':>11} {'overhead s':>11}")
    rows = []
    for i in range(runs):
        spec = digits_spec()
        spec["name"] = f"bench-{i}"
        start = time.perf_counter()
        created = client.post("/v1/jobs", json=spec)
        created.raise_for_status()
        job = follow(client, created.json()["id"])
        wall = time.perf_counter() - start
        if job["status"] != "succeeded":
            raise RuntimeError(f"job ended {job['status']}: {job.get('error_message')}")
        training = client.get(f"/v1/jobs/{job['id']}/report").json()["report"]["timings"]["total"]
        rows.append((wall, training, wall - training))
        print(f"{i:>3} {wall:>16.2f} {training:>11.2f} {wall - training:>11.2f}")
    print(f"median overhead: {statistics.median(r[2] for r in rows):.2f} s")


def submissions_per_second(url: str, seconds: float, threads: int = 8) -> None:
    spec = digits_spec()
    count, errors = [0] * threads, [0] * threads
    stop = time.perf_counter() + seconds

    def hammer(k: int) -> None:
        with httpx.Client(base_url=url, timeout=30) as c:
            while time.perf_counter() < stop:
                r = c.post("/v1/jobs", json=spec)
                if r.status_code == 201:
                    count[k] += 1
                else:
                    errors[k] += 1

    start = time.perf_counter()
    pool = [threading.Thread(target=hammer, args=(k,)) for k in range(threads)]
    for t in pool:
        t.start()
    for t in pool:
        t.join()
    elapsed = time.perf_counter() - start
    print(
        f"submissions: {sum(count)} in {elapsed:.1f} s from {threads} threads = "
        f"{sum(count) / elapsed:.1f} jobs/s ({sum(errors)} errors)"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=10.0)
    args = parser.parse_args()

    name = f"distillery_bench_{uuid.uuid4().hex[:8]}"
    queue = f"distillery-bench-{uuid.uuid4().hex[:8]}"
    admin = create_engine(PG_ADMIN, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    db_url = PG_ADMIN.rsplit("/", 1)[0] + f"/{name}"
    tmp = tempfile.TemporaryDirectory()
    env = dict(
        os.environ,
        DISTILLERY_DATABASE_URL=db_url,
        DISTILLERY_BROKER_URL=REDIS,
        DISTILLERY_QUEUE=queue,
        DISTILLERY_DATA_DIR=tmp.name,
        DISTILLERY_HEARTBEAT_SECONDS="2",
        DISTILLERY_AUTH="none",  # a private throwaway service: no API keys to set up
    )
    procs: list[subprocess.Popen] = []
    try:
        subprocess.run(
            [sys.executable, "-m", "alembic", "upgrade", "head"],
            cwd=ROOT,
            env=env,
            check=True,
            capture_output=True,
        )
        port = free_port()
        url = f"http://127.0.0.1:{port}"
        log = open(Path(tmp.name) / "bench.log", "w")  # noqa: SIM115 - closed with the dir
        api = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "uvicorn",
                "api.main:app",
                "--port",
                str(port),
                "--log-level",
                "warning",
            ],
            cwd=ROOT,
            env=env,
            stdout=log,
            stderr=log,
        )
        worker = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "celery",
                "-A",
                "worker.app",
                "worker",
                "-c",
                "1",
                "-Q",
                queue,
                "--loglevel",
                "WARNING",
            ],
            cwd=ROOT,
            env=env,
            stdout=log,
            stderr=log,
        )
        procs += [api, worker]
        wait_ready(url)
        print(f"stack: uvicorn API + 1 Celery worker, PostgreSQL, Redis; {os.cpu_count()} cores")
        with httpx.Client(base_url=url, timeout=30) as client:
            overhead(client, args.jobs)
        worker.terminate()
        worker.wait(30)
        submissions_per_second(url, args.seconds)
    finally:
        for p in procs:
            p.terminate()
        for p in procs:
            try:
                p.wait(15)
            except subprocess.TimeoutExpired:
                p.kill()
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        client = redis.Redis.from_url(REDIS)
        for key in client.scan_iter(f"{queue}*"):
            client.delete(key)
        tmp.cleanup()


if __name__ == "__main__":
    main()
