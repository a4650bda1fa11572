"""Over a real HTTP connection (uvicorn on loopback), a refused body leaves the keep-alive
connection usable: a request that ended in an unhandled error made uvicorn close it, so the
client's next request on it was reset."""

from __future__ import annotations

import http.client
import socket
import threading
from collections.abc import Iterator

import pytest
import uvicorn
from fastapi import FastAPI

from api.json_body import MAX_DEPTH


@pytest.fixture
def live_port(app: FastAPI) -> Iterator[int]:
    """The app served by uvicorn in a thread, on a socket bound and listening before it starts:
    a client may connect at once (the backlog holds it until uvicorn accepts), so no waiting."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    sock.listen(16)
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", timeout_keep_alive=30))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    try:
        yield sock.getsockname()[1]
    finally:
        server.should_exit = True
        thread.join(timeout=30)
        sock.close()


@pytest.mark.parametrize(
    "body",
    [
        b"[" * 1000 + b"]" * 1000,
        b'{"a":' * 5000 + b"1" + b"}" * 5000,
        b'{"name": "x", "train": {"optimizer": {"lr": NaN}}}',
    ],
    ids=["arrays-1000", "objects-5000", "nan"],
)
def test_the_connection_survives_a_refused_body(live_port: int, body: bytes) -> None:
    conn = http.client.HTTPConnection("127.0.0.1", live_port, timeout=30)
    try:
        conn.request("POST", "/v1/jobs", body=body, headers={"Content-Type": "application/json"})
        first = conn.getresponse()
        payload = first.read()
        sock = conn.sock
        assert sock is not None and first.getheader("connection") != "close"
        conn.request("GET", "/healthz")  # the same connection, kept alive
        second = conn.getresponse()
        assert second.status == 200 and second.read() == b'{"status":"ok"}'
        assert conn.sock is sock, "the client had to reconnect"
        assert first.status == 422, payload
    finally:
        conn.close()


def test_the_limit_is_the_same_over_http(live_port: int) -> None:
    conn = http.client.HTTPConnection("127.0.0.1", live_port, timeout=30)
    try:
        depth = MAX_DEPTH + 1
        conn.request("POST", "/v1/jobs", body=b"[" * depth + b"]" * depth)
        r = conn.getresponse()
        assert r.status == 422 and str(MAX_DEPTH).encode() in r.read()
    finally:
        conn.close()
