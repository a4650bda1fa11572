"""What happened to a job: its event log, and a live stream of its state."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query, Request
from fastapi.responses import StreamingResponse
from sqlalchemy import select

from api.deps import DbSession, Owner, get_sessions, load_job
from api.routes.jobs import NOT_FOUND
from api.schemas import EventList, EventOut
from api.stream import job_events
from store.models import JobEvent

router = APIRouter(prefix="/v1/jobs", tags=["events"])

MAX_EVENT_ID = 2**63 - 1  # the id column is a BIGINT: a larger `after` cannot be compared


@router.get(
    "/{job_id}/events", response_model=EventList, summary="List a job's events", responses=NOT_FOUND
)
def get_events(
    job_id: str,
    session: DbSession,
    owner: Owner,
    after: Annotated[
        int | None,
        Query(
            ge=0,
            le=MAX_EVENT_ID,
            description="only events with an id above this (for polling): the last id seen",
        ),
    ] = None,
) -> EventList:
    """Every state change and notable message, oldest first (ordered by id, which increases
    with time): queued, running on which worker and attempt, broker trouble, cancel requests,
    the outcome."""
    load_job(session, job_id, owner)
    q = select(JobEvent).where(JobEvent.job_id == job_id)
    if after is not None:
        q = q.where(JobEvent.id > after)
    events = session.scalars(q.order_by(JobEvent.id))
    return EventList(items=[EventOut.model_validate(e) for e in events])


@router.get(
    "/{job_id}/stream",
    summary="Stream a job's progress (Server-Sent Events)",
    response_class=StreamingResponse,
    responses={
        200: {
            "content": {"text/event-stream": {"schema": {"type": "string"}}},
            "description": "`event: job` on every change of status/progress/stage/epoch, "
            "then `event: done` when the job finishes; each `data:` is a JobSummary",
        },
        **NOT_FOUND,
    },
)
def stream_job(
    job_id: str, request: Request, session: DbSession, owner: Owner
) -> StreamingResponse:
    """Server-Sent Events: the job's state now, then again each time it changes (the database is
    polled about twice a second), a final `done` event when it finishes, and the stream closes.
    A `: keep-alive` comment is sent every 15 s while nothing changes."""
    load_job(session, job_id, owner)
    session.close()  # the stream opens its own session per poll
    state = request.app.state
    return StreamingResponse(
        job_events(
            get_sessions(request),
            job_id,
            owner,
            poll_s=state.stream_poll_s,
            keepalive_s=state.stream_keepalive_s,
        ),
        media_type="text/event-stream",
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
    )
