"""A webhook URL that points inside the service's network is refused at submit (issue #11,
item 7): 422 naming notify.webhook_url, unless the operator allows that receiver."""

from __future__ import annotations

from typing import Any

import pytest
from fastapi.testclient import TestClient

from api.main import create_app
from store.settings import Settings


@pytest.mark.parametrize(
    "url",
    [
        "http://127.0.0.1:8123/internal-admin",
        "http://10.0.0.8/hook",
        "http://169.254.169.254/latest/meta-data/iam",
        "http://localhost:8123/hook",
        "http://[::1]:8123/hook",
    ],
)
def test_an_internal_webhook_url_is_422(client: TestClient, new_spec: Any, url: str) -> None:
    r = client.post("/v1/jobs", json=new_spec(notify={"webhook_url": url}))
    assert r.status_code == 422, r.text
    (detail,) = r.json()["detail"]
    assert detail["loc"] == "notify.webhook_url"
    assert "DISTILLERY_WEBHOOK_ALLOW" in detail["msg"]


def test_an_allowed_internal_receiver_is_accepted(settings: Settings, new_spec: Any) -> None:
    allowing = settings.model_copy(update={"webhook_allow": "127.0.0.1, 10.0.0.0/8"})
    with TestClient(create_app(allowing)) as client:
        for url in ("http://127.0.0.1:8123/hook", "http://10.0.0.8/hook"):
            r = client.post("/v1/jobs", json=new_spec(notify={"webhook_url": url}))
            assert r.status_code == 201, r.text
        r = client.post("/v1/jobs", json=new_spec(notify={"webhook_url": "http://[::1]:1/"}))
        assert r.status_code == 422, r.text


def test_a_host_that_does_not_resolve_now_is_accepted(client: TestClient, new_spec: Any) -> None:
    """DNS may be down at submit: each delivery resolves and checks the host again."""
    r = client.post("/v1/jobs", json=new_spec(notify={"webhook_url": "https://hooks.invalid/x"}))
    assert r.status_code == 201, r.text
