"""Liveness and readiness probes (outside /v1: they are for orchestrators, not clients)."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse
from sqlalchemy import text

from api.schemas import Health, Readiness

router = APIRouter(tags=["health"])

BROKER_TIMEOUT_S = 2.0


def _check_database(request: Request) -> str:
    try:
        with request.app.state.engine.connect() as conn:
            conn.execute(text("SELECT 1"))
    except Exception as exc:
        return f"error: {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
    return "ok"


def _check_broker(request: Request) -> str:
    try:
        with request.app.state.celery.connection_for_write() as conn:
            conn.ensure_connection(
                max_retries=1, interval_start=0, interval_step=0.2, timeout=BROKER_TIMEOUT_S
            )
    except Exception as exc:
        return f"error: {type(exc).__name__}: {exc}"
    return "ok"


@router.get("/healthz", response_model=Health, summary="Liveness")
def healthz() -> Health:
    """200 while the process serves requests; checks nothing else (a restart would not fix a
    database outage, so liveness must not depend on one)."""
    return Health()


@router.get(
    "/readyz",
    response_model=Readiness,
    summary="Readiness",
    responses={503: {"model": Readiness, "description": "the database or the broker is down"}},
)
def readyz(request: Request) -> JSONResponse:
    """200 when the database answers `SELECT 1` and the broker accepts a connection (within
    about 2 s); otherwise 503 naming the part that is down."""
    checks = {"database": _check_database(request), "broker": _check_broker(request)}
    down = [name for name, result in checks.items() if result != "ok"]
    body = Readiness(
        status="not ready" if down else "ready",
        checks=checks,
        detail=f"{' and '.join(down)} unreachable" if down else None,
    )
    return JSONResponse(status_code=503 if down else 200, content=body.model_dump())
