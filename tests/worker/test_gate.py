"""The check a worker's main process makes before it spends a child on a message (worker/gate.py):
the same claimability as `store.jobs.claim`, read without claiming, and open when it cannot ask."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest

from store.models import utcnow
from worker.gate import worth_a_child

HOUR = timedelta(hours=1)


@pytest.mark.parametrize(
    ("status", "lease_left", "worth"),
    [
        ("queued", None, True),
        ("running", -HOUR, True),  # its worker was lost: claimable again
        ("running", HOUR, False),  # a live worker holds it
        ("cancelling", -HOUR, False),
        ("cancelled", None, False),
        ("succeeded", None, False),
        ("failed", None, False),
    ],
)
def test_worth_a_child_is_claimability(
    jobs: Any, pg_url: str, status: str, lease_left: timedelta | None, worth: bool
) -> None:
    lease = None if lease_left is None else utcnow() + lease_left
    job_id = jobs.make(status=status, lease_expires_at=lease)
    before = jobs.get(job_id)
    assert worth_a_child(job_id, pg_url) is worth
    after = jobs.get(job_id)
    assert (after.status, after.attempts) == (before.status, before.attempts)  # nothing claimed


def test_a_missing_job_is_not_worth_a_child(pg_url: str) -> None:
    assert worth_a_child("no-such-job", pg_url) is False


def test_the_message_goes_on_when_the_database_cannot_be_asked() -> None:
    unreachable = "postgresql+psycopg://nobody@127.0.0.1:1/none?connect_timeout=2"
    assert worth_a_child("any-job", unreachable) is True
