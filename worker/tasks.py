"""Celery tasks: thin shells around `worker.runner.execute_job` and `worker.reconciler.reconcile`.

Registered with `shared_task` under the names in store/queue.py, so every app built by
`worker.app.make_celery` (whose `include` lists this module) knows them, `celery_app` included.

CUDA hygiene: the worker's main process forks a fresh child per job
(`worker_max_tasks_per_child = 1`) and must never initialise CUDA, which a forked child could
not use. Importing torch does not initialise CUDA, so the parent imports the engine once at
start-up (`_preload`): each child then starts with it loaded instead of spending seconds on
imports before it can claim its job. Run one worker process per GPU, each seeing only its
device:

    CUDA_VISIBLE_DEVICES=0 celery -A worker.app worker -Q distillery -c 1 --hostname gpu0@%h
    CUDA_VISIBLE_DEVICES=1 celery -A worker.app worker -Q distillery -c 1 --hostname gpu1@%h

A message whose job cannot be claimed (cancelled, finished) is dropped in the main process before
it costs a child (`_gate`, worker/gate.py).
"""

from __future__ import annotations

import os
import socket
from typing import Any

from celery import Task, shared_task
from celery.signals import task_received, worker_init
from celery.worker.request import Request

from store.queue import RECONCILE, RUN_JOB
from worker.gate import drop_unclaimable


def worker_name(task: Task) -> str:
    """Which worker process holds a job (shown in the job's events)."""
    host = getattr(task.request, "hostname", None) or socket.gethostname()
    return f"{host}/{os.getpid()}"


@worker_init.connect
def _preload(**_: Any) -> None:
    """Import the engine in the parent before the pool forks (CUDA stays uninitialised)."""
    import torch

    import worker.runner  # noqa: F401  (torch, kdcore, the store)

    assert not torch.cuda.is_initialized(), "the worker's parent process must not touch CUDA"


@task_received.connect
def _gate(request: Request, **_: Any) -> None:
    """In the main process, before the pool: drop a message of a job that cannot be claimed."""
    drop_unclaimable(request)


@shared_task(name=RUN_JOB, bind=True)
def run_job(self: Task, job_id: str) -> dict[str, Any]:
    from store.blobs import BlobStore
    from store.db import default_engine
    from store.settings import get_settings
    from worker.runner import execute_job

    settings = get_settings()
    blobs = BlobStore(settings.resolved_blob_dir)
    return execute_job(job_id, settings, default_engine(), blobs, worker_name(self)).as_dict()


@shared_task(name=RECONCILE, bind=True)
def reconcile(self: Task) -> dict[str, int]:
    from store.db import default_engine
    from store.settings import get_settings
    from worker.reconciler import reconcile as reconcile_once

    return reconcile_once(get_settings(), default_engine(), self.app)
