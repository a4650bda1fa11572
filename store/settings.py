"""Service settings from `DISTILLERY_*` environment variables (pydantic-settings).

The defaults are the embedded mode: SQLite and blobs under ./distillery-data/, and a Celery
transport on the local filesystem, so `distill serve` needs no server installed.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from kdcore.limits import DEFAULT_MAX_MODEL_PARAMS, DEFAULT_MAX_TRAINING_MEMORY_BYTES, Limits
from store.egress import Allow, parse_allow


class ProjectLimits(BaseModel):
    """One project's own budget (`project_limits`); a key left out keeps the service's."""

    model_config = ConfigDict(extra="forbid")
    max_model_params: int | None = Field(None, ge=1)
    max_training_memory_bytes: int | None = Field(None, ge=1)


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="DISTILLERY_", extra="ignore")

    data_dir: Path = Field(Path("distillery-data"), description="embedded-mode root folder")
    database_url: str = Field("", description="SQLAlchemy URL; default SQLite in data_dir")
    broker_url: str = Field("", description="Celery broker; default a filesystem transport")
    blob_dir: Path | None = Field(None, description="default data_dir/blobs")
    max_upload_bytes: int = Field(2 * 1024**3, description="larger uploads are refused (413)")
    lease_seconds: float = Field(60.0, description="a running job whose lease expires is lost")
    heartbeat_seconds: float = Field(5.0, description="how often a worker renews its lease")
    reconcile_seconds: float = Field(30.0, description="how often the reconciler runs")
    requeue_after_seconds: float = Field(
        60.0, description="a queued job with no broker message for this long is re-enqueued"
    )
    max_job_runtime_s: int = Field(
        24 * 3600, description="upper bound of train.max_runtime_s; sets the visibility timeout"
    )
    queue: str = Field("distillery", description="Celery queue the jobs go to")
    max_attempts: int = Field(3, ge=1, description="a job lost this many times fails for good")
    auth: Literal["keys", "none"] = Field(
        "keys",
        description="keys: every /v1 request needs `Authorization: Bearer <key>` (distill keys "
        "create); none: no keys, every caller sees every job (a local, single-user service)",
    )
    webhook_secret: str = Field(
        "", description="signs webhooks (HMAC-SHA256) of projects without a secret of their own"
    )
    webhook_max_attempts: int = Field(6, ge=1, description="deliveries given up after this many")
    webhook_backoff_seconds: float = Field(
        2.0, ge=0, description="wait before the 2nd attempt; doubles for each one after"
    )
    webhook_backoff_max_seconds: float = Field(300.0, ge=0, description="cap on one wait")
    webhook_timeout_seconds: float = Field(10.0, gt=0, description="per delivery attempt")
    webhook_inline_seconds: float = Field(
        30.0,
        ge=0,
        description="how long a worker keeps retrying a job's webhook itself before leaving the "
        "remaining attempts to the reconciler (and taking the next job)",
    )
    webhook_allow: str = Field(
        "",
        description="comma-separated host names, addresses and CIDRs that webhooks may reach "
        "although they are internal (loopback, private, link-local...: store/egress.py)",
    )
    # the budget of the models a job builds, estimated before anything is allocated
    # (kdcore/budget.py); `project_limits` overrides it per project
    max_model_params: int = Field(
        DEFAULT_MAX_MODEL_PARAMS, ge=1, description="parameters of any one model a job builds"
    )
    max_training_memory_bytes: int = Field(
        DEFAULT_MAX_TRAINING_MEMORY_BYTES,
        ge=1,
        description="estimated memory of a job's training stage or evaluation",
    )
    project_limits: dict[str, ProjectLimits] = Field(
        default_factory=dict,
        description='JSON: {"<project>": {"max_model_params": ..., '
        '"max_training_memory_bytes": ...}}',
    )
    # quotas per project (None: no limit); a project's own values override these
    # (`distill projects quota`, store/quotas.py); exceeding one is a 429 with Retry-After
    max_running_jobs: int | None = Field(None, ge=0, description="jobs running at once")
    max_queued_jobs: int | None = Field(None, ge=0, description="jobs waiting in the queue")
    max_storage_bytes: int | None = Field(None, ge=0, description="uploads + artifacts")
    max_gpu_seconds_per_day: float | None = Field(
        None, ge=0, description="running time of the project's attempts in the last 24 h"
    )
    rate_limit_per_minute: int | None = Field(None, ge=1, description="API requests per key")
    # retention (store/retention.py, `distill gc`)
    retention_days: float | None = Field(
        None,
        gt=0,
        description="artifacts and checkpoints of jobs finished longer ago are deleted; "
        "None keeps them forever",
    )
    gc_grace_seconds: float = Field(
        3600.0,
        ge=0,
        description="a blob written more recently is never deleted (an upload or a job may be "
        "storing it right now)",
    )
    gc_seconds: float = Field(
        3600.0,
        ge=0,
        description="how often the reconciler runs a garbage-collection pass; 0: never (run "
        "`distill gc` yourself)",
    )

    @field_validator("webhook_allow")
    @classmethod
    def _allow_list_parses(cls, value: str) -> str:
        parse_allow(value)
        return value

    @property
    def webhook_allow_rules(self) -> Allow:
        return parse_allow(self.webhook_allow)

    def limits_for(self, project: str | None) -> Limits:
        """The budget of `project`'s jobs (None: a service without keys, the project "")."""
        own = ProjectLimits.model_validate(self.project_limits.get(project or "", {}))
        return Limits(
            max_model_params=own.max_model_params or self.max_model_params,
            max_training_memory_bytes=own.max_training_memory_bytes
            or self.max_training_memory_bytes,
        )

    @property
    def resolved_database_url(self) -> str:
        return self.database_url or f"sqlite:///{(self.data_dir / 'distillery.db').resolve()}"

    @property
    def resolved_broker_url(self) -> str:
        return self.broker_url or "filesystem://"

    @property
    def resolved_blob_dir(self) -> Path:
        return (self.blob_dir or self.data_dir / "blobs").resolve()

    @property
    def broker_folder(self) -> Path:
        """Where the filesystem transport keeps its messages (embedded mode only)."""
        return (self.data_dir / "broker").resolve()


@lru_cache
def get_settings() -> Settings:
    return Settings()
