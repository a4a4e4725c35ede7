"""supervision: kill requests, per-grant idle and session-length limits

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-23 10:45:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

import policy.models

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("grant", schema=None) as batch_op:
        batch_op.add_column(sa.Column("idle_timeout", sa.Integer(), nullable=True))
        batch_op.add_column(sa.Column("max_session", sa.Integer(), nullable=True))
    with op.batch_alter_table("session", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column("kill_requested_at", policy.models.UTCDateTime(), nullable=True)
        )
        batch_op.add_column(sa.Column("kill_requested_by", sa.String(length=100), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("session", schema=None) as batch_op:
        batch_op.drop_column("kill_requested_by")
        batch_op.drop_column("kill_requested_at")
    with op.batch_alter_table("grant", schema=None) as batch_op:
        batch_op.drop_column("max_session")
        batch_op.drop_column("idle_timeout")
