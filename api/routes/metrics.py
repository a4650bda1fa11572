"""What a job measured: per-epoch metric series and the final evaluation report."""

from __future__ import annotations

from fastapi import APIRouter
from sqlalchemy import select

from api.deps import DbSession, Owner, load_job
from api.errors import ApiError
from api.routes.jobs import NOT_FOUND
from api.schemas import MetricSeries, ReportOut
from store.models import Metric

router = APIRouter(prefix="/v1/jobs", tags=["metrics"])


@router.get(
    "/{job_id}/metrics",
    response_model=MetricSeries,
    summary="Per-epoch metrics, grouped by stage",
    responses=NOT_FOUND,
)
def get_metrics(job_id: str, session: DbSession, owner: Owner) -> MetricSeries:
    """Training curves ready to plot: `series[stage][metric]` is a list of `[epoch, value]` in
    epoch order (stages: teacher, baseline, distill, ...). Grows while the job runs."""
    load_job(session, job_id, owner)
    rows = session.execute(
        select(Metric.stage, Metric.name, Metric.epoch, Metric.value)
        .where(Metric.job_id == job_id)
        .order_by(Metric.stage, Metric.name, Metric.epoch)
    )
    series: dict[str, dict[str, list[tuple[int, float]]]] = {}
    for stage, name, epoch, value in rows:
        series.setdefault(stage, {}).setdefault(name, []).append((epoch, value))
    return MetricSeries(series=series)


@router.get(
    "/{job_id}/report",
    response_model=ReportOut,
    summary="The evaluation report of a finished job",
    responses=NOT_FOUND,
)
def get_report(job_id: str, session: DbSession, owner: Owner) -> ReportOut:
    """The full report the worker wrote with the evaluation (the same content as `report.json`
    of `distill run`). 404 until the job has been evaluated."""
    job = load_job(session, job_id, owner)
    if job.evaluation is None:
        raise ApiError(
            404,
            f"job {job_id!r} has no evaluation yet (it is {job.status}); "
            "the report appears when the job succeeds or fails its gates",
            "not_found",
        )
    return ReportOut(report=job.evaluation.report)
