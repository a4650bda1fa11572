"""evaluations: the dynamic teacher of GPD jobs; teacher columns nullable

A GPD job records its dynamic teacher (accuracy, parameters, width ratio) and the gaps between
static teacher, dynamic teacher and student; `gap_reference` says which teacher `gap` is
measured to. A GPD job without a static teacher (scenarios scratch and finetune) has no teacher
numbers and no compression ratio, so those columns become nullable.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-24
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

TEACHER_COLUMNS = (
    ("teacher_accuracy", sa.Float()),
    ("teacher_params", sa.BigInteger()),
    ("compression_ratio", sa.Float()),
    ("teacher_latency_ms", sa.Float()),
)


def upgrade() -> None:
    with op.batch_alter_table("evaluations", schema=None) as batch_op:
        batch_op.add_column(sa.Column("dynamic_teacher_accuracy", sa.Float(), nullable=True))
        batch_op.add_column(sa.Column("dynamic_teacher_params", sa.BigInteger(), nullable=True))
        batch_op.add_column(sa.Column("dynamic_teacher_ratio", sa.Integer(), nullable=True))
        batch_op.add_column(
            sa.Column(
                "gap_reference", sa.String(length=16), server_default="teacher", nullable=False
            )
        )
        batch_op.add_column(sa.Column("gap_teacher_dynamic", sa.Float(), nullable=True))
        batch_op.add_column(sa.Column("gap_dynamic_student", sa.Float(), nullable=True))
        for name, type_ in TEACHER_COLUMNS:
            batch_op.alter_column(name, existing_type=type_, nullable=True)


def downgrade() -> None:
    # Rows without a static teacher cannot satisfy the old NOT NULL columns: they go (their
    # jobs keep their artifacts; only the evaluation numbers are lost).
    op.execute("DELETE FROM evaluations WHERE teacher_accuracy IS NULL")
    with op.batch_alter_table("evaluations", schema=None) as batch_op:
        for name, type_ in TEACHER_COLUMNS:
            batch_op.alter_column(name, existing_type=type_, nullable=False)
        batch_op.drop_column("gap_dynamic_student")
        batch_op.drop_column("gap_teacher_dynamic")
        batch_op.drop_column("gap_reference")
        batch_op.drop_column("dynamic_teacher_ratio")
        batch_op.drop_column("dynamic_teacher_params")
        batch_op.drop_column("dynamic_teacher_accuracy")
