"""Celery settings that make delivery at-least-once and safe, the time limits a message
carries, the tasks' registration, and CUDA hygiene of the worker's main process."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from celery import Celery

from kdcore.spec import TrainSpec
from store.queue import RECONCILE, RUN_JOB, celery_config, enqueue, task_time_limits
from store.settings import Settings
from worker.app import celery_app

ROOT = Path(__file__).resolve().parents[2]


def test_celery_config_for_long_jobs() -> None:
    runtime = 7 * 24 * 3600
    config = celery_config(
        Settings(max_job_runtime_s=runtime, broker_url="redis://127.0.0.1:6379/0")
    )
    assert config["broker_transport_options"]["visibility_timeout"] > runtime
    assert config["task_acks_late"] is True
    assert config["task_reject_on_worker_lost"] is True
    assert config["worker_prefetch_multiplier"] == 1
    assert config["worker_max_tasks_per_child"] == 1
    assert config["worker_concurrency"] == 1
    assert config["beat_schedule"]["reconcile"]["task"] == RECONCILE


def test_time_limits_and_enqueue(app: Celery, settings: Settings, redis_url: str) -> None:
    runtime = TrainSpec(max_runtime_s=900).max_runtime_s
    limits = task_time_limits(runtime)
    assert limits["soft_time_limit"] == runtime < limits["time_limit"]

    enqueue("job-abc", runtime, app)
    (raw,) = redis.Redis.from_url(redis_url).lrange(settings.queue, 0, -1)
    message: dict[str, Any] = json.loads(raw)
    assert message["headers"]["task"] == RUN_JOB
    assert message["headers"]["timelimit"] == [limits["time_limit"], limits["soft_time_limit"]]
    assert message["headers"]["argsrepr"] == "['job-abc']"
    assert message["properties"]["delivery_info"]["routing_key"] == settings.queue


def test_tasks_are_registered_on_the_app() -> None:
    import worker.tasks  # noqa: F401  (the worker imports it through `include`)

    assert {RUN_JOB, RECONCILE} <= set(celery_app.tasks.keys())


def python(code: str, cwd: Path) -> str:
    """Run `code` in a fresh interpreter (in `cwd`, where the default settings put files)."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    env = {k: v for k, v in env.items() if not k.startswith("DISTILLERY_")}
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=cwd, env=env, capture_output=True, text=True, check=True
    )
    return out.stdout.strip()


@pytest.mark.parametrize("module", ["worker.app", "worker.tasks", "worker.reconciler"])
def test_worker_main_process_imports_no_torch(module: str, tmp_path: Path) -> None:
    """What the Celery parent process imports must not touch torch (let alone CUDA): it forks
    the child that runs the job."""
    assert python(f"import sys, {module}; print('torch' in sys.modules)", tmp_path) == "False"


def test_runner_import_leaves_cuda_uninitialised(tmp_path: Path) -> None:
    code = "import torch, worker.runner; print(torch.cuda.is_initialized())"
    assert python(code, tmp_path) == "False"


@pytest.fixture
def service_env(monkeypatch: pytest.MonkeyPatch, settings: Settings) -> Iterator[Settings]:
    """The process-wide settings, engine and app pointed at this test's database and queue."""
    from store import db
    from store.settings import get_settings

    for key, value in {
        "DATABASE_URL": settings.database_url,
        "BROKER_URL": settings.broker_url,
        "BLOB_DIR": str(settings.blob_dir),
        "QUEUE": settings.queue,
        "DATA_DIR": str(settings.data_dir),
    }.items():
        monkeypatch.setenv(f"DISTILLERY_{key}", value)

    def clear() -> None:
        if db.default_engine.cache_info().currsize:
            db.default_engine().dispose()
        get_settings.cache_clear()
        db.default_engine.cache_clear()
        db._factory.cache_clear()

    clear()
    yield get_settings()
    clear()


def test_tasks_run_in_process(service_env: Settings, jobs: Any, app: Celery) -> None:
    """The task bodies are thin: the job task runs `execute_job`, reconcile runs a pass."""
    from worker.tasks import reconcile, run_job

    job_id = jobs.make()
    result = run_job.apply(args=[job_id]).get()
    assert result["status"] == "succeeded" and result["attempt"] == 1
    assert jobs.get(job_id).worker.endswith(f"/{os.getpid()}")
    assert run_job.apply(args=[job_id]).get()["status"] == "skipped"

    counts = reconcile.apply().get()
    assert set(counts) >= {"lost_requeued", "stale", "in_broker", "reenqueued"}
