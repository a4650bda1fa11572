"""Schemathesis generates POST /v1/jobs bodies from the app's own OpenAPI document and sends them
in process (ASGI, no network): none may end in a 5xx, every answer must be one the document
lists, in the shape it gives, and bodies valid by the document must reach a 201, which needs a
schema that describes the specs the service accepts.

Deterministic (`derandomize`, no example database) and bounded (`MAX_EXAMPLES` bodies, a few
seconds): the same bodies every run.
"""

from __future__ import annotations

from collections import Counter

import schemathesis
from fastapi import FastAPI
from hypothesis import HealthCheck, Phase, given, settings
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

MAX_EXAMPLES = 60
# What the document promises; not schemathesis' auth checks: these tests run without keys.
CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
]


def test_generated_specs_are_accepted_and_never_a_5xx(app: FastAPI) -> None:
    schema = schemathesis.openapi.from_asgi("/openapi.json", app)
    submit = schema["/v1/jobs"]["POST"]
    statuses: Counter[int] = Counter()

    @given(case=submit.as_strategy())
    @settings(
        max_examples=MAX_EXAMPLES,
        derandomize=True,
        database=None,
        deadline=None,
        phases=[Phase.generate],
        suppress_health_check=list(HealthCheck),
    )
    def send(case: schemathesis.Case) -> None:
        response = case.call()
        statuses[response.status_code] += 1
        assert response.status_code < 500, (case.body, response.text)
        case.validate_response(response, checks=CHECKS)

    send()
    assert statuses[201] > 0, f"no generated spec was accepted: {dict(statuses)}"
