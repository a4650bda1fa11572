"""Metric series and the Server-Sent Events stream, on rows written straight to the store."""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Iterator
from typing import Any

from fastapi import FastAPI
from fastapi.testclient import TestClient
from sqlalchemy.orm import Session

from store import jobs as store_jobs
from store.models import Job, JobStatus, Metric


def _events(text: str) -> list[tuple[str, dict[str, Any]]]:
    out = []
    for block in text.strip().split("\n\n"):
        lines = [line for line in block.splitlines() if not line.startswith(":")]
        fields = dict(line.split(": ", 1) for line in lines)
        if "event" in fields:
            out.append((fields["event"], json.loads(fields["data"])))
    return out


def test_metrics_are_grouped_by_stage_and_name(
    client: TestClient, db: Session, new_spec: Any
) -> None:
    job_id = client.post("/v1/jobs", json=new_spec()).json()["id"]
    rows = [
        ("distill", 2, "train_loss", 0.5),
        ("distill", 1, "train_loss", 0.9),
        ("distill", 1, "student_accuracy", 80.0),
        ("teacher", 1, "train_loss", 1.2),
        ("distill", 2, "student_accuracy", 90.0),
    ]
    for stage, epoch, name, value in rows:
        db.add(Metric(job_id=job_id, stage=stage, epoch=epoch, name=name, value=value))
    db.commit()
    series = client.get(f"/v1/jobs/{job_id}/metrics").json()["series"]
    assert series == {
        "distill": {
            "student_accuracy": [[1, 80.0], [2, 90.0]],
            "train_loss": [[1, 0.9], [2, 0.5]],
        },
        "teacher": {"train_loss": [[1, 1.2]]},
    }


def test_no_metrics_yet_is_an_empty_series(client: TestClient, new_spec: Any) -> None:
    job_id = client.post("/v1/jobs", json=new_spec()).json()["id"]
    assert client.get(f"/v1/jobs/{job_id}/metrics").json() == {"series": {}}


def test_stream_of_a_finished_job_sends_done_and_ends(
    client: TestClient, db: Session, new_spec: Any
) -> None:
    job_id = client.post("/v1/jobs", json=new_spec()).json()["id"]
    job = db.get(Job, job_id)
    assert job is not None
    job.status, job.progress = JobStatus.succeeded, 1.0
    db.commit()
    with client.stream("GET", f"/v1/jobs/{job_id}/stream") as r:
        assert r.status_code == 200
        assert r.headers["content-type"].startswith("text/event-stream")
        text = r.read().decode()
    assert _events(text) == [("done", _events(text)[0][1])]
    assert _events(text)[0][1]["status"] == "succeeded" and _events(text)[0][1]["id"] == job_id


def _read_stream(
    lines: Iterator[str], on_event: Callable[[int], None], on_comment: Callable[[], None]
) -> str:
    """The whole stream; `on_event(n)` after the n-th event arrives, `on_comment()` after each
    comment line (so a test can act on what the client has really seen, not on time)."""
    text, block = [], []
    for line in lines:
        text.append(line)
        if line.startswith(":"):
            on_comment()
        elif line:
            block.append(line)
        elif block:
            block = []
            on_event(len(_events("\n".join(text) + "\n\n")))
    return "\n".join(text) + "\n"


WAIT_S = 60.0  # a generous bound on one step: the tests wait on events, never on the clock


def test_stream_follows_changes_until_the_job_ends(
    app: FastAPI, client: TestClient, new_spec: Any
) -> None:
    job_id = client.post("/v1/jobs", json=new_spec()).json()["id"]
    seen = [threading.Event() for _ in range(5)]

    def worker() -> None:
        """Play a worker: claim, report progress twice, finish (each its own transaction),
        each change once the client has seen the state before it."""
        assert seen[0].wait(WAIT_S)
        with app.state.sessions() as s:
            claim = store_jobs.claim(s, job_id, "w1", lease_s=60)
            s.commit()
        assert claim is not None
        for n, (progress, epoch) in enumerate(((0.25, 1), (0.5, 2)), start=1):
            assert seen[n].wait(WAIT_S)
            with app.state.sessions() as s:
                store_jobs.report_progress(s, claim, progress, "distill", epoch)
                s.commit()
        assert seen[3].wait(WAIT_S)
        with app.state.sessions() as s:
            store_jobs.finish(s, claim, JobStatus.succeeded, "done")
            s.commit()

    thread = threading.Thread(target=worker)
    thread.start()
    try:
        with client.stream("GET", f"/v1/jobs/{job_id}/stream") as r:
            text = _read_stream(r.iter_lines(), lambda n: seen[n - 1].set(), lambda: None)
            events = _events(text)
    finally:
        for event in seen:
            event.set()
        thread.join()
    kinds = [kind for kind, _ in events]
    assert kinds == ["job", "job", "job", "job", "done"]
    states = [(d["status"], d["progress"], d["current_epoch"]) for _, d in events]
    assert states == [
        ("queued", 0.0, None),
        ("running", 0.0, None),
        ("running", 0.25, 1),
        ("running", 0.5, 2),
        ("succeeded", 1.0, 2),
    ]


def test_stream_sends_keepalive_comments(app: FastAPI, client: TestClient, new_spec: Any) -> None:
    job_id = client.post("/v1/jobs", json=new_spec()).json()["id"]
    app.state.stream_keepalive_s = 0.1
    kept_alive = threading.Event()

    def finish_after_a_keepalive() -> None:
        assert kept_alive.wait(WAIT_S)
        with app.state.sessions() as s:
            job = s.get(Job, job_id)
            assert job is not None
            store_jobs.request_cancel(s, job)
            s.commit()

    thread = threading.Thread(target=finish_after_a_keepalive)
    thread.start()
    try:
        with client.stream("GET", f"/v1/jobs/{job_id}/stream") as r:
            text = _read_stream(r.iter_lines(), lambda n: None, kept_alive.set)
    finally:
        kept_alive.set()
        thread.join()
    assert ": keep-alive" in text
    assert [kind for kind, _ in _events(text)] == ["job", "done"]
