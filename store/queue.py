"""The job queue's configuration, shared by the API (which sends) and the workers (which run).

It lives in the service's shared layer so that the API can enqueue without importing the worker
package: a message carries only a task name and a job id, never worker code. `worker.app` builds
the workers' app from the same configuration and adds the tasks.

Delivery is at least once and the database decides what runs (see store/jobs.py), so the
settings favour never losing a message over never repeating one: late acks, a message given
back when its worker process dies, one message prefetched at a time, a fresh child process per
job (nothing, CUDA included, leaks from one job into the next). A message whose job cannot be
claimed (cancelled, finished) is dropped by the worker's main process before it costs a child
(worker/gate.py).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from celery import Celery

from store.settings import Settings, get_settings

RUN_JOB = "distillery.run_job"
RECONCILE = "distillery.reconcile"
VISIBILITY_MARGIN_S = 3600


def celery_config(settings: Settings) -> dict[str, Any]:
    broker = settings.resolved_broker_url
    transport: dict[str, Any] = {
        # Redis hands an unacknowledged message to another worker after this long: it must
        # outlast the longest job a spec may ask for, or a slow job would run twice.
        "visibility_timeout": settings.max_job_runtime_s + VISIBILITY_MARGIN_S,
    }
    if broker.startswith("filesystem"):
        folder = settings.broker_folder
        for sub in ("queue", "processed", "control"):
            (folder / sub).mkdir(parents=True, exist_ok=True)
        transport.update(
            data_folder_in=str(folder / "queue"),
            data_folder_out=str(folder / "queue"),
            processed_folder=str(folder / "processed"),
            # the exchange table; kombu's default is ./control in whatever folder the worker
            # was started from
            control_folder=str(folder / "control"),
            store_processed=False,
        )
    return {
        "broker_url": broker,
        "broker_transport_options": transport,
        "broker_connection_retry_on_startup": True,
        "task_default_queue": settings.queue,
        "task_acks_late": True,
        "task_reject_on_worker_lost": True,
        "task_ignore_result": True,
        "worker_prefetch_multiplier": 1,
        "worker_max_tasks_per_child": 1,
        "worker_concurrency": 1,
        "worker_hijack_root_logger": False,
        "beat_schedule": {
            "reconcile": {
                "task": RECONCILE,
                "schedule": settings.reconcile_seconds,
                "options": {"queue": settings.queue, "expires": settings.reconcile_seconds},
            },
        },
    }


def make_celery(settings: Settings | None = None, include: Sequence[str] = ()) -> Celery:
    """A Celery app on the service's broker; `include` names task modules a worker imports
    (none for an app that only sends, like the API's)."""
    app = Celery("distillery", include=list(include))
    app.conf.update(celery_config(settings or get_settings()))
    return app


def task_time_limits(max_runtime_s: int) -> dict[str, int]:
    """Soft limit = the spec's max runtime (the task fails the job cleanly); hard limit a
    minute later (the child process is killed)."""
    return {"soft_time_limit": max_runtime_s, "time_limit": max_runtime_s + 60}


def enqueue(job_id: str, max_runtime_s: int, app: Celery) -> None:
    """Put a job id on the queue; the worker reads everything else from the database.

    The queue is the one `app` was configured with (its settings), not a process-wide default,
    so an app built from other settings (the API's, a test's) sends where its workers listen.
    """
    app.send_task(
        RUN_JOB,
        args=[job_id],
        queue=app.conf.task_default_queue,
        **task_time_limits(max_runtime_s),
    )
