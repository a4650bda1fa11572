"""The whole service end to end, over HTTP, with real API and Celery worker processes on the real
PostgreSQL and Redis: a digits job to a downloadable, correct student; cancelling a running job;
the 4xx a user can cause; readiness with the broker up and down; a job on uploaded files.

One API and one worker serve the whole module (see conftest.py); the worker runs one job at a
time, so the tests run their jobs one after another."""

from __future__ import annotations

import hashlib
import io
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import torch
from torch import nn

STATUS_ORDER = ("queued", "running", "succeeded")
UPLOAD_LIMIT = 256 * 1024  # the API's limit (conftest.UPLOAD_LIMIT; conftest is not importable)

# examples/digits-kd.yaml, made small: a few seconds of training on 2 CPU cores.
DIGITS: dict[str, Any] = {
    "name": "it-digits",
    "teacher": {
        "arch": "mlp",
        "kwargs": {"hidden": [64]},
        "train": {"epochs": 5, "batch_size": 64, "seed": 0},
    },
    "student": {"arch": "mlp", "kwargs": {"hidden": [16]}},
    "data": {"source": "digits", "val_fraction": 0.2, "seed": 0},
    "method": {"name": "kd", "temperature": 4.0, "alpha": 0.9},
    "train": {
        "epochs": 5,
        "batch_size": 64,
        "optimizer": {"name": "adam", "lr": 0.003},
        "seed": 0,
    },
    "evaluate": {"latency_runs": 2},
    "export": ["torchscript", "onnx", "safetensors"],
}


def spec(**sections: Any) -> dict[str, Any]:
    return {**DIGITS, **sections}


def status_events(events: list[dict[str, Any]]) -> list[str]:
    return [e["status"] for e in events if e["kind"] == "status"]


def accuracy(logits: torch.Tensor, y: torch.Tensor) -> float:
    return float((logits.argmax(1) == y).double().mean()) * 100


# --- a job from submission to a checked student ------------------------------------------------


def test_digits_job_succeeds_and_its_torchscript_student_scores_as_reported(
    api: Any, tmp_path: Path
) -> None:
    from kdcore.data import load_data
    from kdcore.spec import DataSpec

    job = api.submit(DIGITS)
    job_id = job["id"]
    assert job["status"] == "queued"

    # Follow it with Server-Sent Events: state changes, then a final `done`, then the end.
    events = api.stream(job_id, timeout=120)
    names = [name for name, _ in events]
    assert names[-1] == "done" and names.count("done") == 1, names
    assert set(names[:-1]) <= {"job"}, names
    final = events[-1][1]
    assert (final["id"], final["status"], final["progress"]) == (job_id, "succeeded", 1.0)
    seen = [data["status"] for _, data in events]
    assert "running" in seen, seen
    assert seen == sorted(seen, key=STATUS_ORDER.index), seen
    progress = [data["progress"] for _, data in events]
    assert progress == sorted(progress), progress

    job = api.job(job_id)
    assert job["status"] == "succeeded", job
    assert job["attempts"] == 1
    assert job["error_code"] is None and job["finished_at"] is not None

    # Events: queued → running → succeeded, each once, with the stages in between.
    log = api.events(job_id)
    assert status_events(log) == ["queued", "running", "succeeded"]
    messages = [e["message"] for e in log]
    for stage in ("teacher", "distill", "evaluate", "export"):
        assert f"{stage} started" in messages and f"{stage} finished" in messages, messages
    assert not [m for m in messages if "resumed" in m]

    # Per-epoch series of every training stage.
    series = api.metrics(job_id)
    for stage in ("teacher", "distill"):
        for metric in ("train_loss", "student_accuracy", "lr"):
            assert [e for e, _ in series[stage][metric]] == [1, 2, 3, 4, 5], (stage, metric)

    evaluation = job["evaluation"]
    assert evaluation is not None
    student_acc = evaluation["student_accuracy"]
    assert abs(series["distill"]["student_accuracy"][-1][1] - student_acc) < 1e-3
    assert abs(evaluation["gap"] - (evaluation["teacher_accuracy"] - student_acc)) < 1e-3
    assert evaluation["student_params"] < evaluation["teacher_params"]

    # One artifact per asked format (plus the safetensors config sidecar).
    artifacts = {a["format"]: a for a in job["artifacts"]}
    assert len(artifacts) == len(job["artifacts"])
    assert set(artifacts) == {"torchscript", "onnx", "safetensors", "config"}

    # Download the TorchScript student: the bytes match the ETag and the artifact row.
    url = f"/v1/jobs/{job_id}/artifacts/torchscript"
    r = api.http.get(url)
    assert r.status_code == 200, r.text
    digest = hashlib.sha256(r.content).hexdigest()
    assert r.headers["etag"] == f'"{digest}"'
    assert digest == artifacts["torchscript"]["sha256"]
    assert len(r.content) == artifacts["torchscript"]["size_bytes"]
    assert api.http.get(url, headers={"If-None-Match": r.headers["etag"]}).status_code == 304

    # Its accuracy on the job's validation split (same seed, split and normalisation) is the
    # one the service reported.
    path = tmp_path / "student.torchscript.pt"
    path.write_bytes(r.content)
    student = torch.jit.load(str(path), map_location="cpu").eval()
    data = load_data(DataSpec.model_validate(job["spec"]["data"]))
    with torch.no_grad():
        acc = accuracy(student(data.x_val), data.y_val)
    assert abs(acc - student_acc) < 1e-3, (acc, student_acc)
    assert acc > 50  # a trained student, not chance (10 classes)


# --- cancellation ------------------------------------------------------------------------------


def test_cancel_stops_a_running_job(api: Any) -> None:
    long = spec(
        name="it-cancel",
        teacher={"arch": "mlp", "kwargs": {"hidden": [32]}, "train": {"epochs": 1}},
        train={"epochs": 200, "batch_size": 8, "seed": 0},
    )
    job_id = api.submit(long)["id"]
    api.wait(
        job_id,
        lambda j: j["status"] == "running" and j["progress"] > 0,
        timeout=60,
        what="running with progress",
        poll_s=0.1,
    )

    r = api.http.post(f"/v1/jobs/{job_id}/cancel")
    assert r.status_code == 200, r.text
    assert r.json()["status"] in ("cancelling", "cancelled")
    # How soon a cancel is seen is a speed figure, not a test: wait on the state.
    job = api.wait_status(job_id, "cancelled", timeout=120)

    assert job["attempts"] == 1
    assert job["artifacts"] == [] and job["evaluation"] is None
    assert status_events(api.events(job_id)) == ["queued", "running", "cancelling", "cancelled"]
    # Cancel is idempotent on a finished job.
    again = api.http.post(f"/v1/jobs/{job_id}/cancel")
    assert (again.status_code, again.json()["status"]) == (200, "cancelled")


# --- errors a user can cause -------------------------------------------------------------------


def test_bad_spec_is_a_422_naming_the_field(api: Any) -> None:
    r = api.http.post("/v1/jobs", json=spec(method={"name": "no-such-method"}))
    assert r.status_code == 422, r.text
    body = r.json()
    locs = [d["loc"] for d in body["detail"]]
    assert locs == ["method.name"], body
    assert "no-such-method" in body["detail"][0]["msg"] and "kd" in body["detail"][0]["msg"]
    assert "method.name" in body["message"]


def test_unknown_upload_is_a_422_naming_the_field(api: Any) -> None:
    r = api.http.post(
        "/v1/jobs",
        json=spec(data={"source": "upload:does-not-exist"}),
    )
    assert r.status_code == 422, r.text
    (problem,) = r.json()["detail"]
    assert problem["loc"] == "data.source"
    assert "does-not-exist" in problem["msg"] and "/v1/uploads" in problem["msg"]


def test_oversized_upload_is_a_413(api: Any) -> None:
    big = b"\0" * (4 * UPLOAD_LIMIT)

    # The size is known up front (Content-Length).
    r = api.upload(big, "big.npz", "dataset")
    assert r.status_code == 413, r.text
    assert r.json()["limit_bytes"] == UPLOAD_LIMIT

    # No Content-Length (chunked): the limit holds while streaming.
    boundary = "itboundary"

    def body() -> Any:
        yield (
            f"--{boundary}\r\nContent-Disposition: form-data; name=kind\r\n\r\ndataset\r\n"
            f"--{boundary}\r\nContent-Disposition: form-data; name=file; filename=big.npz\r\n"
            "Content-Type: application/octet-stream\r\n\r\n"
        ).encode()
        for _ in range(16):
            yield b"\1" * (UPLOAD_LIMIT // 4)
        yield f"\r\n--{boundary}--\r\n".encode()

    try:
        r = api.http.post(
            "/v1/uploads",
            content=body(),
            headers={"Content-Type": f"multipart/form-data; boundary={boundary}"},
        )
    except (httpx.WriteError, httpx.ReadError, httpx.RemoteProtocolError):
        # The server may answer and close the connection before the client has sent it all
        # (a timeout is not excused: the server must answer); it must still be up.
        pass
    else:
        assert "content-length" not in r.request.headers
        assert r.status_code == 413, r.text
    assert api.http.get("/healthz").status_code == 200


def test_readyz_is_503_with_the_broker_down_and_200_with_it_up(api: Any, service: Any) -> None:
    r = api.http.get("/readyz")
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["status"] == "ready" and not body["detail"], body
    assert body["checks"] == {"database": "ok", "broker": "ok"}, body

    down = service.start_api(
        "api-broker-down", ready=False, DISTILLERY_BROKER_URL="redis://127.0.0.1:1/0"
    )
    try:
        r = down.http.get("/readyz")
        assert r.status_code == 503, r.text
        body = r.json()
        assert body["status"] == "not ready"
        assert body["checks"]["database"] == "ok"
        assert body["checks"]["broker"].startswith("error"), body
        assert body["detail"] == "broker unreachable"
        assert down.http.get("/healthz").status_code == 200  # liveness does not care
    finally:
        down.proc.kill()


# --- a job on uploaded files ---------------------------------------------------------------------


def blobs_dataset(seed: int = 0) -> dict[str, np.ndarray]:
    """Three Gaussian blobs in 12 dimensions, with a validation split of its own."""
    rng = np.random.default_rng(seed)
    centers = rng.normal(0, 2.0, (3, 12))

    def sample(n: int) -> tuple[np.ndarray, np.ndarray]:
        y = rng.integers(0, 3, n)
        x = centers[y] + rng.normal(0, 1.5, (n, 12))
        return x.astype(np.float32), y.astype(np.int64)

    x_train, y_train = sample(300)
    x_val, y_val = sample(120)
    return {"x_train": x_train, "y_train": y_train, "x_val": x_val, "y_val": y_val}


def trained_teacher(arrays: dict[str, np.ndarray]) -> nn.Module:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(12, 32), nn.ReLU(), nn.Linear(32, 3))
    x, y = torch.from_numpy(arrays["x_train"]), torch.from_numpy(arrays["y_train"])
    opt = torch.optim.Adam(model.parameters(), lr=0.01)
    for _ in range(100):
        opt.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
    return model.eval()


def test_job_on_an_uploaded_dataset_and_teacher(api: Any) -> None:
    arrays = blobs_dataset()
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    dataset = api.upload(buf.getvalue(), "blobs.npz", "dataset")
    assert dataset.status_code == 201, dataset.text

    teacher = trained_teacher(arrays)
    buf = io.BytesIO()
    torch.jit.save(torch.jit.script(teacher), buf)
    model = api.upload(buf.getvalue(), "teacher.ts.pt", "model")
    assert model.status_code == 201, model.text
    assert model.json()["sha256"] == hashlib.sha256(buf.getvalue()).hexdigest()
    # The same bytes again: the same upload, 200 instead of 201.
    again = api.upload(buf.getvalue(), "teacher.ts.pt", "model")
    assert (again.status_code, again.json()["id"]) == (200, model.json()["id"])

    # A model upload where a dataset belongs is refused, naming the field.
    wrong = api.http.post(
        "/v1/jobs", json=spec(data={"source": model.json()["ref"]}, name="it-wrong-kind")
    )
    assert wrong.status_code == 422, wrong.text
    assert [d["loc"] for d in wrong.json()["detail"]] == ["data.source"]

    job_id = api.submit(
        spec(
            name="it-uploads",
            teacher={"torchscript": model.json()["ref"]},
            student={"arch": "mlp", "kwargs": {"hidden": [8]}},
            # the teacher was trained on raw features: no normalisation
            data={"source": dataset.json()["ref"], "normalize": False},
            train={"epochs": 3, "batch_size": 32, "seed": 0},
            export=["torchscript", "safetensors"],
        )
    )["id"]
    job = api.wait_status(job_id, "succeeded", timeout=90)
    assert job["attempts"] == 1
    assert job["spec"]["teacher"]["torchscript"] == model.json()["ref"]
    assert {a["format"] for a in job["artifacts"]} == {"torchscript", "safetensors", "config"}

    # The service ran our teacher on our validation split: same accuracy as here.
    with torch.no_grad():
        expected = accuracy(
            teacher(torch.from_numpy(arrays["x_val"])), torch.from_numpy(arrays["y_val"])
        )
    assert abs(job["evaluation"]["teacher_accuracy"] - expected) < 1e-3
    report = api.http.get(f"/v1/jobs/{job_id}/report").json()["report"]
    assert report["data"]["n_train"] == 300 and report["data"]["n_val"] == 120
