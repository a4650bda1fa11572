"""DELETE /v1/jobs/{id} and /v1/uploads/{id}: the rows and files go, except what is still live
(a job that has not ended, anything a queued or running job names) and a blob another row
shares. Blob ages are set with os.utime (a blob stored within the grace period stays until the
GC, since a concurrent upload may be storing the same bytes)."""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from sqlalchemy import func, select
from typer.testing import CliRunner

from client import remote
from client.cli import app as cli
from client.sdk import Conflict, Distillery, NotFound
from store.models import Artifact, Job, JobEvent, JobStatus, Metric, Upload, utcnow
from store.retention import checkpoint_prefix

from ._projects import Project, add_artifact, new_project, set_job


def settle(app: FastAPI, sha: str) -> None:
    """Make a blob look stored two hours ago: past the grace period."""
    past = time.time() - 7200
    os.utime(app.state.blobs.path(sha), (past, past))


def finished_job(
    app: FastAPI, http: TestClient, project: Project, spec: dict[str, Any], content: bytes
) -> tuple[str, str]:
    """A succeeded job of `project` with an onnx artifact of `content`, checkpoints and a
    metric; (job id, artifact sha256)."""
    job_id = http.post("/v1/jobs", json=spec, headers=project.headers).json()["id"]
    set_job(app, job_id, status=JobStatus.succeeded, finished_at=utcnow())
    sha = add_artifact(app, job_id, content)
    settle(app, sha)
    src = app.state.blobs.root / "tmp" / "ckpt"
    src.write_bytes(b"checkpoint")
    app.state.blobs.put_named(f"{checkpoint_prefix(job_id)}/distill", src)
    src.unlink()
    with app.state.sessions() as s:
        s.add(Metric(job_id=job_id, stage="distill", epoch=1, name="loss", value=0.5))
        s.commit()
    return job_id, sha


def rows(app: FastAPI, model: Any, job_id: str) -> int:
    with app.state.sessions() as s:
        return int(s.scalar(select(func.count()).select_from(model).where(model.job_id == job_id)))


def upload(http: TestClient, project: Project, content: bytes, kind: str = "dataset") -> Any:
    r = http.post(
        "/v1/uploads",
        files={"file": ("d.npz", content, "application/octet-stream")},
        data={"kind": kind},
        headers=project.headers,
    )
    assert r.status_code in (200, 201), r.text
    return r.json()


def test_deleting_a_finished_job_removes_its_rows_and_files(
    keyed_app: FastAPI, http: TestClient, new_spec: Any
) -> None:
    team = new_project(keyed_app)
    job_id, sha = finished_job(keyed_app, http, team, new_spec(), b"student onnx")
    folder = keyed_app.state.blobs.named_path(checkpoint_prefix(job_id))
    assert folder.exists() and keyed_app.state.blobs.exists(sha)

    r = http.delete(f"/v1/jobs/{job_id}", headers=team.headers)
    assert r.status_code == 200, r.text
    body = r.json()
    assert (body["id"], body["kind"], body["files_deleted"], body["files_shared"]) == (
        job_id,
        "job",
        1,
        0,
    )
    assert body["bytes_freed"] == len(b"student onnx") + len(b"checkpoint")
    assert http.get(f"/v1/jobs/{job_id}", headers=team.headers).status_code == 404
    assert http.delete(f"/v1/jobs/{job_id}", headers=team.headers).status_code == 404
    assert not keyed_app.state.blobs.exists(sha) and not folder.exists()
    for model in (JobEvent, Artifact, Metric):
        assert rows(keyed_app, model, job_id) == 0


@pytest.mark.parametrize("status", [JobStatus.queued, JobStatus.running, JobStatus.cancelling])
def test_a_job_that_has_not_ended_is_409_and_kept(
    keyed_app: FastAPI, http: TestClient, new_spec: Any, status: JobStatus
) -> None:
    team = new_project(keyed_app)
    job_id, sha = finished_job(keyed_app, http, team, new_spec(), f"live {status}".encode())
    set_job(keyed_app, job_id, status=status, finished_at=None)
    r = http.delete(f"/v1/jobs/{job_id}", headers=team.headers)
    assert r.status_code == 409, r.text
    assert r.json()["status"] == status and "cancel it first" in r.json()["detail"]
    assert http.get(f"/v1/jobs/{job_id}", headers=team.headers).json()["status"] == status
    assert keyed_app.state.blobs.exists(sha)
    assert keyed_app.state.blobs.named_path(checkpoint_prefix(job_id)).exists()


def test_a_blob_shared_with_another_row_survives(
    keyed_app: FastAPI, http: TestClient, new_spec: Any
) -> None:
    """Two projects' jobs produced the same bytes, and one uploaded them too: the blob goes
    with the last row that names it."""
    a, b = new_project(keyed_app), new_project(keyed_app)
    same = b"identical student"
    job_a, sha = finished_job(keyed_app, http, a, new_spec(), same)
    job_b, sha_b = finished_job(keyed_app, http, b, new_spec(), same)
    up = upload(http, b, same)
    assert sha == sha_b == up["sha256"]
    settle(keyed_app, sha)
    blobs = keyed_app.state.blobs

    r = http.delete(f"/v1/jobs/{job_a}", headers=a.headers)
    assert r.json()["files_shared"] == 1 and blobs.exists(sha)
    assert http.get(f"/v1/jobs/{job_b}/artifacts/onnx", headers=b.headers).content == same
    http.delete(f"/v1/jobs/{job_b}", headers=b.headers)
    assert blobs.exists(sha)  # the upload still names it
    r = http.delete(f"/v1/uploads/{up['id']}", headers=b.headers)
    assert r.status_code == 200 and r.json()["files_deleted"] == 1
    assert not blobs.exists(sha)


def test_a_blob_stored_within_the_grace_period_waits_for_the_gc(
    keyed_app: FastAPI, http: TestClient
) -> None:
    team = new_project(keyed_app)
    up = upload(http, team, b"just uploaded")
    r = http.delete(f"/v1/uploads/{up['id']}", headers=team.headers)
    assert r.status_code == 200 and r.json()["files_recent"] == 1
    assert keyed_app.state.blobs.exists(up["sha256"])
    assert http.get(f"/v1/uploads/{up['id']}", headers=team.headers).status_code == 404


def test_an_upload_a_queued_job_names_is_409(
    keyed_app: FastAPI, http: TestClient, new_spec: Any
) -> None:
    team = new_project(keyed_app)
    data = upload(http, team, b"x_train" * 20)
    job = http.post(
        "/v1/jobs", json=new_spec(data={"source": data["ref"]}), headers=team.headers
    ).json()
    r = http.delete(f"/v1/uploads/{data['id']}", headers=team.headers)
    assert r.status_code == 409 and r.json()["code"] == "in_use"
    assert r.json()["used_by"] == [job["id"]]
    set_job(keyed_app, job["id"], status=JobStatus.running)
    assert http.delete(f"/v1/uploads/{data['id']}", headers=team.headers).status_code == 409
    set_job(keyed_app, job["id"], status=JobStatus.failed, finished_at=utcnow())
    assert http.delete(f"/v1/uploads/{data['id']}", headers=team.headers).status_code == 200
    with keyed_app.state.sessions() as s:
        assert s.get(Upload, data["id"]) is None


def test_a_job_a_queued_job_starts_from_is_409(
    keyed_app: FastAPI, http: TestClient, new_spec: Any
) -> None:
    team = new_project(keyed_app)
    base, _ = finished_job(keyed_app, http, team, new_spec(), b"weights")
    add_artifact(keyed_app, base, b"safetensors weights", "safetensors")
    follower = http.post(
        "/v1/jobs",
        json=new_spec(
            student={"arch": "mlp", "kwargs": {"hidden": [16]}, "checkpoint": f"job:{base}"}
        ),
        headers=team.headers,
    )
    assert follower.status_code == 201, follower.text
    r = http.delete(f"/v1/jobs/{base}", headers=team.headers)
    assert r.status_code == 409 and r.json()["used_by"] == [follower.json()["id"]]
    http.post(f"/v1/jobs/{follower.json()['id']}/cancel", headers=team.headers)
    assert http.delete(f"/v1/jobs/{base}", headers=team.headers).status_code == 200


def test_another_projects_job_and_upload_are_404(
    keyed_app: FastAPI, http: TestClient, new_spec: Any
) -> None:
    a, b = new_project(keyed_app), new_project(keyed_app)
    job_id, sha = finished_job(keyed_app, http, a, new_spec(), b"a's student")
    up = upload(http, a, b"a's data")
    assert http.delete(f"/v1/jobs/{job_id}", headers=b.headers).status_code == 404
    assert http.delete(f"/v1/uploads/{up['id']}", headers=b.headers).status_code == 404
    with keyed_app.state.sessions() as s:
        assert s.get(Job, job_id) is not None and s.get(Upload, up["id"]) is not None
    assert keyed_app.state.blobs.exists(sha)


def test_sdk_and_cli_delete(
    keyed_app: FastAPI,
    http: TestClient,
    new_spec: Any,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
) -> None:
    team = new_project(keyed_app)
    job_id, _ = finished_job(keyed_app, http, team, new_spec(), b"sdk")
    up = upload(http, team, b"sdk data")
    transport = http._transport  # the app, in process

    with Distillery("http://testserver", team.key, transport=transport) as d:
        running = d.submit(new_spec())
        with pytest.raises(Conflict):
            running.delete()
        assert d.job(job_id).delete()["kind"] == "job"
        with pytest.raises(NotFound):
            d.job(job_id)
        assert d.delete_upload(up["id"])["kind"] == "upload"

    def connected(server: str, token: str | None) -> Distillery:
        return Distillery(server, token, transport=transport)

    monkeypatch.setattr(remote, "Distillery", connected)
    other, _ = finished_job(keyed_app, http, team, new_spec(), b"cli")
    env = {"DISTILLERY_URL": "http://testserver", "DISTILLERY_TOKEN": team.key}
    r = CliRunner().invoke(cli, ["delete", other], env=env)
    assert r.exit_code == 0, r.output
    assert f"job {other}: deleted" in r.stderr
    r = CliRunner().invoke(cli, ["delete", other], env=env)
    assert r.exit_code == 2 and "not found" in r.stderr
    r = CliRunner().invoke(cli, ["delete", "--upload", "nothing"], env=env)
    assert r.exit_code == 2
