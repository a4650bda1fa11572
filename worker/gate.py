"""Before a child process: the message of a job that cannot be claimed is dropped in the worker's
main process.

Why: a worker runs every message in a fresh child (`worker_max_tasks_per_child = 1` in
store/queue.py, so nothing leaks from one job into the next), and the pool takes seconds to hand
a message to a new child (3.4 s a message in `bench/drain_cancelled.py`). A message of a cancelled
or finished job paid that only for the child's claim to say no: 3,247 cancelled jobs held a new
job back for ~3.9 h (issue #11).

How: Celery sends `task_received` in the main process when a message arrives, before the request
goes to the pool. `drop_unclaimable` reads the job's row with the predicate `store.jobs.claim`
uses (`store.jobs.claimable`: a read, nothing is claimed) and, when the job cannot be claimed,
adds the message's task id to the worker's revoked set, as Celery's own `revoke` command does.
Celery then discards the request like any revoked task: acknowledged, never sent to the pool,
and the next message comes.

Why it is safe: it only filters; the child still claims with the fenced UPDATE. What it drops a
child would have skipped: a finished, cancelled, cancelling or missing job, or one running under
a live lease (if that worker dies, the reconciler sends the job a fresh message). When the check
itself fails (the database unreachable) the message goes on and the child decides, as before.

The main process forks the children, so it holds no database connection across a fork (parent
and child would share its socket): the check's engine has no pool, and a connection lives for one
check only.
"""

from __future__ import annotations

import logging
from functools import cache

from celery.worker import state
from celery.worker.request import Request
from sqlalchemy import Engine, create_engine
from sqlalchemy.pool import NullPool

from store.db import session_scope
from store.jobs import claimable
from store.queue import RUN_JOB
from store.settings import get_settings

log = logging.getLogger(__name__)


@cache
def _engine(url: str) -> Engine:
    return create_engine(url, poolclass=NullPool)


def job_id_of(request: Request) -> str | None:
    """The job a RUN_JOB request is for; None for any other task."""
    if request.name != RUN_JOB or not request.args:
        return None
    return str(request.args[0])


def worth_a_child(job_id: str, database_url: str) -> bool:
    """False only when the database says the job cannot be claimed now."""
    try:
        with session_scope(_engine(database_url)) as s:
            return claimable(s, job_id)
    except Exception:
        log.warning("job %s: claimability check failed; the child decides", job_id, exc_info=True)
        return True


def drop_unclaimable(request: Request) -> bool:
    """Revoke `request` in this worker when its job cannot be claimed; True when dropped."""
    job_id = job_id_of(request)
    if job_id is None or worth_a_child(job_id, get_settings().resolved_database_url):
        return False
    state.revoked.add(request.id)
    log.info("job %s: not claimable; its message is dropped without a child process", job_id)
    return True
