"""The job state machine on PostgreSQL: conditional claims, fencing, transitions, listing."""

from collections.abc import Iterator
from datetime import timedelta

import pytest
from sqlalchemy import update
from sqlalchemy.orm import Session

from kdcore.validation import parse_spec
from store import jobs
from store.db import make_engine, session_factory
from store.models import Job, JobStatus, utcnow

SPEC = parse_spec(
    {
        "name": "store-test",
        "teacher": {"arch": "mlp", "train": {}},
        "student": {"arch": "mlp"},
        "data": {"source": "digits"},
    }
)


@pytest.fixture
def session(pg_url: str) -> Iterator[Session]:
    engine = make_engine(pg_url)
    with session_factory(engine)() as s:
        yield s
    engine.dispose()


def new_job(s: Session, name: str = "store-test") -> Job:
    job = jobs.create_job(s, SPEC.model_copy(update={"name": name}))
    s.commit()
    return job


def expire_lease(s: Session, job_id: str) -> None:
    s.execute(
        update(Job).where(Job.id == job_id).values(lease_expires_at=utcnow() - timedelta(seconds=1))
    )
    s.commit()


def test_claim_is_exclusive_and_fenced(session: Session) -> None:
    job = new_job(session)
    first = jobs.claim(session, job.id, "w1", lease_s=60)
    session.commit()
    assert first is not None and first.attempt == 1
    assert jobs.claim(session, job.id, "w2", lease_s=60) is None  # live lease: not claimable
    expire_lease(session, job.id)
    second = jobs.claim(session, job.id, "w2", lease_s=60)
    session.commit()
    assert second is not None and second.attempt == 2
    # the first worker's writes are fenced off now
    assert jobs.heartbeat(session, first, 60) is None
    assert jobs.finish(session, first, JobStatus.succeeded, "late") is False
    assert jobs.finish(session, second, JobStatus.succeeded, "done") is True
    session.commit()
    assert jobs.claim(session, job.id, "w3", lease_s=60) is None  # finished: a no-op
    session.refresh(job)
    assert (job.status, job.attempts, job.progress) == ("succeeded", 2, 1.0)
    kinds = [e.status for e in job.events]
    assert kinds == ["queued", "running", "running", "succeeded"]


def test_cancel_and_retry_transitions(session: Session) -> None:
    queued = new_job(session)
    jobs.request_cancel(session, queued)
    assert queued.status == JobStatus.cancelled and queued.finished_at is not None
    jobs.retry(session, queued)
    assert queued.status == JobStatus.queued and queued.finished_at is None
    with pytest.raises(jobs.IllegalTransition, match="cannot retry a job that is queued"):
        jobs.retry(session, queued)
    session.commit()
    c = jobs.claim(session, queued.id, "w", 60)
    session.commit()
    session.refresh(queued)
    jobs.request_cancel(session, queued)
    assert queued.status == JobStatus.cancelling
    session.commit()
    assert jobs.heartbeat(session, c, 60) == JobStatus.cancelling
    assert jobs.finish(session, c, JobStatus.cancelled, "stopped")
    session.commit()
    # a user's retry starts the count of attempts towards max_attempts again
    session.refresh(queued)
    jobs.retry(session, queued)
    session.commit()
    again = jobs.claim(session, queued.id, "w", 60)
    session.commit()
    assert again is not None and (again.attempt, again.since_retry) == (2, 1)
    assert jobs.finish(session, again, JobStatus.cancelled, "stopped")
    session.commit()
    session.refresh(queued)
    jobs.request_cancel(session, queued)  # finished: unchanged
    assert queued.status == JobStatus.cancelled


def test_recover_lost_requeues_running_and_ends_cancelling(session: Session) -> None:
    running, cancelling = new_job(session), new_job(session)
    for job in (running, cancelling):
        jobs.claim(session, job.id, "w", 60)
    session.commit()
    session.refresh(cancelling)
    jobs.request_cancel(session, cancelling)
    session.commit()
    # (the session database is shared: other tests' lost jobs may be recovered here too)
    mine = {running.id, cancelling.id}
    assert mine.isdisjoint(jobs.recover_lost(session))  # leases still live
    session.commit()
    expire_lease(session, running.id)
    expire_lease(session, cancelling.id)
    assert mine & set(jobs.recover_lost(session)) == {running.id}
    session.commit()
    session.refresh(running)
    session.refresh(cancelling)
    assert running.status == JobStatus.queued and cancelling.status == JobStatus.cancelled


def test_metrics_replayed_epoch_overwrites(session: Session) -> None:
    job = new_job(session)
    c = jobs.claim(session, job.id, "w", 60)
    jobs.record_metrics(session, c, "distill", 1, {"train_loss": 2.0})
    session.commit()
    jobs.record_metrics(session, c, "distill", 1, {"train_loss": 1.5, "student_accuracy": 50.0})
    session.commit()
    from sqlalchemy import select

    from store.models import Metric

    rows = session.scalars(select(Metric).where(Metric.job_id == job.id)).all()
    assert sorted((m.name, m.value) for m in rows) == [
        ("student_accuracy", 50.0),
        ("train_loss", 1.5),
    ]


def test_list_pages_newest_first_without_duplicates(session: Session) -> None:
    made = [new_job(session, name="page-test").id for _ in range(5)]
    seen, cursor = [], None
    while True:
        page, cursor = jobs.list_jobs(session, name="page-test", limit=2, cursor=cursor)
        seen += [j.id for j in page]
        if cursor is None:
            break
    assert seen == list(reversed(made))
    with pytest.raises(ValueError, match="not a cursor"):
        jobs.list_jobs(session, cursor="garbage!")


def test_stale_queued(session: Session) -> None:
    job = new_job(session)
    assert job.id not in jobs.stale_queued(session, timedelta(seconds=60))
    assert job.id in jobs.stale_queued(session, timedelta(seconds=-1))
    jobs.mark_enqueued(session, job.id)
    session.commit()
    assert job.id not in jobs.stale_queued(session, timedelta(seconds=60))


def test_progress_never_goes_back_within_a_run(session: Session) -> None:
    job = new_job(session)
    c = jobs.claim(session, job.id, "w", 60)
    jobs.report_progress(session, c, 0.4, "distill", 3)
    jobs.report_progress(session, c, 0.1, "teacher", 1)  # a resumed attempt replaying a stage
    session.commit()
    session.refresh(job)
    assert (job.progress, job.stage, job.current_epoch) == (0.4, "teacher", 1)
    jobs.report_progress(session, c, 0.7, "distill", 5)
    session.commit()
    session.refresh(job)
    assert job.progress == 0.7
