"""The Python SDK against a live API and worker: submit and wait, idempotent resubmission (also
under a race), project isolation, uploads skipped when the server has the file, resumed and
verified downloads, and a job-end webhook delivered with a valid signature after a failure."""

from __future__ import annotations

import hashlib
import json
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import httpx
import pytest
from typer.testing import CliRunner

from client.cli import app
from client.download import part_path
from client.sdk import (
    Conflict,
    Distillery,
    InvalidRequest,
    Job,
    NotFound,
    Unauthorized,
)
from worker.webhooks import SIGNATURE_HEADER, verify_signature

from .conftest import WEBHOOK_SECRET, Receiver, Service, spec, write_dataset


class Recording(httpx.BaseTransport):
    """An httpx transport that keeps (method, path) of every request and can break the body of
    the first artifact download after `break_after` bytes (a dropped connection)."""

    def __init__(self, break_after: int | None = None):
        self.inner = httpx.HTTPTransport()
        self.calls: list[tuple[str, str]] = []
        self.break_after = break_after

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        self.calls.append((request.method, request.url.path))
        response = self.inner.handle_request(request)
        if (
            self.break_after is not None
            and request.method == "GET"
            and "/artifacts/" in request.url.path
        ):
            limit, self.break_after = self.break_after, None
            response.stream = _Broken(response.stream, limit)  # type: ignore[arg-type]
        return response


class _Broken(httpx.SyncByteStream):
    def __init__(self, inner: Any, limit: int):
        self.inner, self.limit = inner, limit

    def __iter__(self) -> Any:
        sent = 0
        for chunk in self.inner:
            room = self.limit - sent
            if room <= 0:
                break
            yield chunk[:room]
            sent += min(len(chunk), room)
        raise httpx.ReadError("connection dropped (test)")

    def close(self) -> None:
        self.inner.close()


@pytest.fixture(scope="module")
def finished(service: Service) -> Job:
    """A succeeded job of project a, submitted by 6 racing requests with one key."""
    body = spec(export=["onnx", "torchscript"])
    key = uuid.uuid4().hex
    headers = {"Authorization": f"Bearer {service.token_a}", "Idempotency-Key": key}
    answers: list[httpx.Response] = []
    barrier = threading.Barrier(6)

    def post() -> None:
        barrier.wait()
        answers.append(httpx.post(f"{service.url}/v1/jobs", json=body, headers=headers, timeout=30))

    threads = [threading.Thread(target=post) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(r.status_code for r in answers) == [200] * 5 + [201], [r.text for r in answers]
    assert len({r.json()["id"] for r in answers}) == 1
    with Distillery(service.url, service.token_a) as d:
        job = d.job(answers[0].json()["id"]).wait(timeout=120, poll=0.3)
    assert job.status == "succeeded", job.error_message
    return job


def test_racing_resubmissions_make_one_job(finished: Job, service: Service) -> None:
    with Distillery(service.url, service.token_a) as d:
        same_name = d.jobs(name=finished.name)
    assert [j.id for j in same_name] == [finished.id]


def test_submit_and_wait_give_status_metrics_evaluation_events(
    finished: Job, service: Service
) -> None:
    with Distillery(service.url, service.token_a) as d:
        job = d.job(finished.id)
        assert job.finished and job.status == "succeeded"
        ev = job.evaluation
        assert ev is not None and ev.gap == pytest.approx(ev.teacher_accuracy - ev.student_accuracy)
        assert {a.format for a in job.artifacts} == {"onnx", "torchscript"}
        series = job.metrics()
        assert [e for e, _ in series["distill"]["train_loss"]] == [1, 2]
        kinds = [e.kind for e in job.events()]
        assert kinds[0] == "status" and "stage" in kinds
        assert job.report()["gap"] == pytest.approx(ev.gap)


def test_resubmitting_with_a_key_returns_the_same_job(service: Service) -> None:
    body, key = spec(), uuid.uuid4().hex
    with Distillery(service.url, service.token_a) as d:
        first = d.submit(body, idempotency_key=key)
        again = d.submit(body, idempotency_key=key)
        assert again.id == first.id and again.replayed and not first.replayed
        with pytest.raises(Conflict) as info:
            d.submit({**body, "train": {"epochs": 3}}, idempotency_key=key)
        assert info.value.job_id == first.id
        first.cancel()  # not needed any more; frees the worker
        assert first.wait(timeout=60, poll=0.3).status == "cancelled"


def test_invalid_specs_raise_with_field_paths(service: Service) -> None:
    with Distillery(service.url, service.token_a) as d, pytest.raises(InvalidRequest) as info:
        d.submit(spec(train={"epochs": 0}, student={"arch": "mlp", "kwarg": {}}))
    assert {e.loc for e in info.value.errors} == {"train.epochs", "student.kwarg"}
    assert info.value.status_code == 422 and info.value.code == "invalid_spec"


def test_another_projects_jobs_uploads_and_artifacts_are_not_found(
    finished: Job, service: Service, tmp_path: Path
) -> None:
    data = write_dataset(tmp_path / "a.npz", seed=7)
    with Distillery(service.url, service.token_a) as a:
        upload = a.upload(data, "dataset")
    sha = hashlib.sha256(data.read_bytes()).hexdigest()
    with Distillery(service.url, service.token_b) as b:
        assert finished.id not in [j.id for j in b.jobs(limit=200)]
        for call in (
            lambda: b.job(finished.id),
            lambda: b._request("POST", f"/v1/jobs/{finished.id}/cancel"),
            lambda: b._request("GET", f"/v1/jobs/{finished.id}/artifacts/onnx"),
            lambda: b._request("GET", f"/v1/uploads/{upload.id}"),
        ):
            with pytest.raises(NotFound):
                call()
        # even holding a's Job object, b's client cannot download its artifact
        foreign = Job(b, finished.data)
        with pytest.raises(NotFound):
            foreign.download("onnx", tmp_path / "stolen.onnx")
        assert not (tmp_path / "stolen.onnx").exists()
        assert b.find_upload(sha) is None
    for token in (None, "dk_wrong"):
        with Distillery(service.url, token or "") as anonymous, pytest.raises(Unauthorized):
            anonymous.job(finished.id)
    with Distillery(service.url, service.token_a) as a:
        assert a.job(finished.id).status == "succeeded"  # b's cancel did nothing


def test_uploads_are_skipped_when_the_server_has_the_file(service: Service, tmp_path: Path) -> None:
    data = write_dataset(tmp_path / "d.npz", seed=3)
    transport = Recording()
    with Distillery(service.url, service.token_a, transport=transport) as d:
        first = d.upload(data, "dataset")
        second = d.upload(data, "dataset")
    assert first == second
    posts = [c for c in transport.calls if c == ("POST", "/v1/uploads")]
    assert len(posts) == 1  # the second call only asked (GET /v1/uploads?sha256=...)


def test_a_dataset_stored_without_its_suffix_is_sent_again_and_renamed(
    service: Service, tmp_path: Path
) -> None:
    """Bytes first uploaded as `data` (no format) become usable once sent as `data.npz`."""
    data = write_dataset(tmp_path / "d.npz", seed=4)
    bare = tmp_path / "data"
    bare.write_bytes(data.read_bytes())
    transport = Recording()
    with Distillery(service.url, service.token_a, transport=transport) as d:
        first = d.upload(bare, "dataset")
        second = d.upload(data, "dataset")
    posts = [c for c in transport.calls if c == ("POST", "/v1/uploads")]
    assert len(posts) == 2 and second.id == first.id
    assert second.filename.endswith(".npz")


def test_a_download_resumes_from_its_part_file(
    finished: Job, service: Service, tmp_path: Path
) -> None:
    """Interrupted earlier (the first bytes are on disk, fetched with a Range): the next
    download asks only for the rest and checks the whole file's sha256."""
    onnx = next(a for a in finished.artifacts if a.format == "onnx")
    dest = tmp_path / "student.onnx"
    n = onnx.size_bytes // 3
    head = httpx.get(
        service.url + onnx.download_url,
        headers={"Authorization": f"Bearer {service.token_a}", "Range": f"bytes=0-{n - 1}"},
    )
    assert head.status_code == 206 and len(head.content) == n
    part_path(dest).write_bytes(head.content)
    with Distillery(service.url, service.token_a) as d:
        got = d.job(finished.id).download("onnx", dest)
    assert (got.resumed_from, got.size_bytes) == (n, onnx.size_bytes)
    assert hashlib.sha256(dest.read_bytes()).hexdigest() == onnx.sha256 == got.sha256
    assert not part_path(dest).exists()
    with Distillery(service.url, service.token_a) as d:  # already there: nothing to fetch
        assert d.job(finished.id).download("onnx", dest).skipped


def test_a_dropped_connection_is_resumed_in_the_same_call(
    finished: Job, service: Service, tmp_path: Path
) -> None:
    ts = next(a for a in finished.artifacts if a.format == "torchscript")
    transport = Recording(break_after=ts.size_bytes // 2)
    with Distillery(service.url, service.token_a, transport=transport) as d:
        got = d.job(finished.id).download("torchscript", tmp_path)
    assert got.resumed_from == ts.size_bytes // 2
    assert got.path.name.endswith("-student.torchscript.pt")
    assert hashlib.sha256(got.path.read_bytes()).hexdigest() == ts.sha256


def test_a_corrupt_part_file_is_detected_and_removed(
    finished: Job, service: Service, tmp_path: Path
) -> None:
    from client.errors import ChecksumMismatch

    onnx = next(a for a in finished.artifacts if a.format == "onnx")
    dest = tmp_path / "s.onnx"
    part_path(dest).write_bytes(b"\0" * (onnx.size_bytes // 2))  # wrong bytes, right length
    with Distillery(service.url, service.token_a) as d, pytest.raises(ChecksumMismatch):
        d.job(finished.id).download("onnx", dest)
    assert not part_path(dest).exists() and not dest.exists()
    with Distillery(service.url, service.token_a) as d:  # the next try starts over and works
        assert d.job(finished.id).download("onnx", dest).sha256 == onnx.sha256


def test_webhook_is_signed_retried_and_recorded(
    service: Service, receiver: Receiver, tmp_path: Path
) -> None:
    receiver.statuses = [500]  # the receiver fails once
    with Distillery(service.url, service.token_a) as d:
        job = d.submit(spec(notify={"webhook_url": receiver.url}))
        follow = CliRunner().invoke(app, ["logs", job.id, "--follow"], env=service.env())
        assert follow.exit_code == 0, follow.stderr
        assert "distill epoch 2:" in follow.stdout and "status" in follow.stdout
        assert job.wait(timeout=60, poll=0.3).status == "succeeded"
        requests = receiver.wait_for(2)
        assert len(requests) == 2, service.log_tail()
        (h1, b1), (h2, b2) = requests
        assert b1 == b2 and h1["Distillery-Delivery"] == h2["Distillery-Delivery"]
        assert verify_signature(WEBHOOK_SECRET, h2[SIGNATURE_HEADER], b2)
        assert not verify_signature("another secret", h2[SIGNATURE_HEADER], b2)
        payload = json.loads(b2)
        assert payload["type"] == "job.succeeded" and payload["job"]["id"] == job.id
        assert payload["job"]["project"] == service.project_a
        assert payload["evaluation"]["student_accuracy"] == job.evaluation.student_accuracy  # type: ignore[union-attr]
        # The worker records a delivery after the receiver has answered: wait for the event.
        deadline = time.monotonic() + 20
        while True:
            hooks = [e for e in job.events() if e.kind == "webhook"]
            if len(hooks) >= 2 or time.monotonic() > deadline:
                break
            time.sleep(0.2)
        assert [e.data["outcome"] for e in hooks] == ["retrying", "delivered"]  # type: ignore[index]
        assert job.refresh().status == "succeeded"
