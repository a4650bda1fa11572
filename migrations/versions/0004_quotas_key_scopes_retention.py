"""projects: quota overrides; api keys: scope and expiry; artifacts: index on the blob key

`projects.quotas` holds a project's overrides of the service's quota settings (JSON, null: none).
`api_keys.scope` is "read" or "write"; existing keys keep what they could do ("write").
`api_keys.expires_at` is null for keys that never expire (every existing key).
`ix_artifacts_storage_key` lets a deletion find whether another artifact still uses a blob.

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-25
"""

from collections.abc import Sequence
from datetime import UTC, datetime

import sqlalchemy as sa
from alembic import op

import store.models

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("projects", schema=None) as batch_op:
        batch_op.add_column(sa.Column("quotas", sa.JSON(), nullable=True))
    with op.batch_alter_table("api_keys", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column("scope", sa.String(length=8), server_default="write", nullable=False)
        )
        batch_op.add_column(
            sa.Column("expires_at", store.models.UTCDateTime(timezone=True), nullable=True)
        )
    with op.batch_alter_table("artifacts", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_artifacts_storage_key"), ["storage_key"], unique=False)


def downgrade() -> None:
    # 0003 knows neither scopes nor expiry: a read-only or expiring key would come back as a key
    # that may do everything forever, so such keys are revoked (their owners need new keys)
    keys = sa.table(
        "api_keys",
        sa.column("scope", sa.String()),
        sa.column("expires_at", store.models.UTCDateTime()),
        sa.column("revoked_at", store.models.UTCDateTime()),
    )
    op.execute(
        keys.update()
        .where(
            keys.c.revoked_at.is_(None),
            sa.or_(keys.c.scope != "write", keys.c.expires_at.is_not(None)),
        )
        .values(revoked_at=datetime.now(UTC))
    )
    with op.batch_alter_table("artifacts", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_artifacts_storage_key"))
    with op.batch_alter_table("api_keys", schema=None) as batch_op:
        batch_op.drop_column("expires_at")
        batch_op.drop_column("scope")
    with op.batch_alter_table("projects", schema=None) as batch_op:
        batch_op.drop_column("quotas")
