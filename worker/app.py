"""The workers' Celery app: the queue's configuration (store/queue.py) plus the tasks.

This is the `-A` target of every worker; the API never imports it (it sends with an app of its
own from store.queue). One worker process per GPU, each seeing only its device, one job at a
time:

    CUDA_VISIBLE_DEVICES=0 celery -A worker.app worker -Q distillery -c 1 --hostname gpu0@%h

The main process must never initialise CUDA (a forked child cannot use a CUDA context made
before the fork): nothing under worker/ touches torch.cuda at import time, and worker.tasks
imports torch and kdcore only inside the task body, in the child. The reconciler runs as
`python -m worker.reconcile_loop`; `celery -A worker.app beat` schedules the same pass as a
task instead (on the job queue, so it waits behind running jobs).
"""

from __future__ import annotations

from celery import Celery

from store import queue
from store.settings import Settings

TASK_MODULES = ("worker.tasks",)


def make_celery(settings: Settings | None = None) -> Celery:
    """An app that knows the tasks (a worker's), on `settings`' broker and queue."""
    return queue.make_celery(settings, include=TASK_MODULES)


celery_app = make_celery()
