"""How long a worker takes to get past messages of cancelled jobs to a job that can run.

Issue #11, item 2: thousands of queued jobs cancelled, then a worker started; every message of a
cancelled job used to cost the worker a fresh child process (seconds each) just to find the job
not claimable, so a new job waited hours behind them.

This makes a fresh PostgreSQL database and a Redis queue of its own, N cancelled jobs each with
its message on the queue, then one new queued job with its message last; starts one Celery
worker (`celery -A worker.app worker -c 1`, as in production) and prints
  - the time from the worker saying "ready" to the new job being claimed (`running`),
  - that time per cancelled message, and messages drained per minute.
Everything it made is removed at the end (worker stopped, database dropped, queue keys deleted).

    .venv/bin/python bench/drain_cancelled.py [--cancelled 200] [--log]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import redis
from sqlalchemy import create_engine, select, text

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from celery import Celery  # noqa: E402
from sqlalchemy import Engine  # noqa: E402

from kdcore.validation import parse_spec  # noqa: E402
from store.db import make_engine, session_scope, upgrade_schema  # noqa: E402
from store.jobs import create_job, request_cancel  # noqa: E402
from store.models import Job  # noqa: E402
from store.queue import enqueue, make_celery  # noqa: E402
from store.settings import Settings  # noqa: E402

PG_ADMIN = os.environ.get(
    "DISTILLERY_TEST_PG", "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"
)
REDIS = os.environ.get("DISTILLERY_TEST_REDIS", "redis://127.0.0.1:6379/0")
SPEC: dict[str, Any] = {
    "name": "drain-bench",
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


def fill(engine: Engine, app: Celery, cancelled: int) -> str:
    """`cancelled` cancelled jobs with a message each, then one queued job; its id."""
    spec = parse_spec(SPEC)
    for _ in range(cancelled):
        with session_scope(engine) as s:
            job = create_job(s, spec)
            request_cancel(s, job)
            job_id = job.id
        enqueue(job_id, 600, app)
    with session_scope(engine) as s:
        new = create_job(s, spec).id
    enqueue(new, 600, app)
    return new


def status(engine: Engine, job_id: str) -> str:
    with session_scope(engine) as s:
        return str(s.scalar(select(Job.status).where(Job.id == job_id)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cancelled", type=int, default=200, help="cancelled jobs' messages")
    parser.add_argument("--timeout", type=float, default=3600, help="give up after (s)")
    parser.add_argument("--log", action="store_true", help="print the end of the worker's log")
    args = parser.parse_args()

    name = f"distillery_bench_{uuid.uuid4().hex[:8]}"
    queue = f"distillery-bench-{uuid.uuid4().hex[:8]}"
    admin = create_engine(PG_ADMIN, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    db_url = PG_ADMIN.rsplit("/", 1)[0] + f"/{name}"
    tmp = tempfile.TemporaryDirectory()
    settings = Settings(database_url=db_url, broker_url=REDIS, queue=queue, data_dir=Path(tmp.name))
    engine = make_engine(db_url)
    app = make_celery(settings)
    worker: subprocess.Popen[bytes] | None = None
    log_path = Path(tmp.name) / "worker.log"
    try:
        upgrade_schema(db_url)
        new = fill(engine, app, args.cancelled)
        env = {k: v for k, v in os.environ.items() if not k.startswith("DISTILLERY_")}
        env.update(
            DISTILLERY_DATABASE_URL=db_url,
            DISTILLERY_BROKER_URL=REDIS,
            DISTILLERY_QUEUE=queue,
            DISTILLERY_DATA_DIR=tmp.name,
            OMP_NUM_THREADS="1",
        )
        with log_path.open("wb") as log:
            worker = subprocess.Popen(
                [sys.executable, "-m", "celery", "-A", "worker.app", "worker",
                 "-c", "1", "-Q", queue, "--loglevel", "INFO"],
                cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT,
            )  # fmt: skip
        deadline = time.monotonic() + args.timeout
        while " ready." not in log_path.read_text(errors="replace"):
            if worker.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"the worker did not start:\n{log_path.read_text()}")
            time.sleep(0.05)
        ready = time.monotonic()
        while status(engine, new) == "queued":
            if worker.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"the new job was not claimed:\n{log_path.read_text()[-3000:]}")
            time.sleep(0.05)
        waited = time.monotonic() - ready
        n = max(args.cancelled, 1)
        cores = os.cpu_count()
        print(f"{args.cancelled} cancelled jobs' messages, then a new job; 1 worker, {cores} cores")
        print(f"worker ready -> new job claimed: {waited:.1f} s")
        per_minute = 60 * n / waited
        print(f"per cancelled message: {1000 * waited / n:.0f} ms ({per_minute:.0f} a minute)")
    finally:
        if worker is not None:
            worker.terminate()
            try:
                worker.wait(30)
            except subprocess.TimeoutExpired:
                worker.kill()
        app.close()
        engine.dispose()
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()
        client = redis.Redis.from_url(REDIS)
        for key in client.scan_iter(f"{queue}*"):
            client.delete(key)
        if args.log and log_path.exists():
            print(log_path.read_text(errors="replace")[-6000:])
        tmp.cleanup()


if __name__ == "__main__":
    main()
