"""browser door: one-time connect tickets; observers required by device, grant, session

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-06 03:50:00

``connect_ticket`` holds the portal's one-time tickets for the gateway's browser door
(``policy.tickets``), by SHA-256 only. ``device.observer_required`` (None: by criticality),
``grant.observer_required`` and ``session.observer_required`` say when a session is
moderated (``policy.moderation``). The columns are added in place (no table copy on
SQLite), so the policy-generation triggers of migration 0006 stay on those tables.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

import policy.models

revision: str = "0007"
down_revision: str | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "connect_ticket",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("token_hash", sa.String(length=64), nullable=False),
        sa.Column("purpose", sa.String(length=16), nullable=False),
        sa.Column("vendor_user_id", sa.Integer(), nullable=True),
        sa.Column("staff_user_id", sa.Integer(), nullable=True),
        sa.Column("actor", sa.String(length=100), nullable=False),
        sa.Column("grant_id", sa.Integer(), nullable=True),
        sa.Column("device_id", sa.Integer(), nullable=True),
        sa.Column("service", sa.String(length=50), nullable=True),
        sa.Column("session_id", sa.String(length=32), nullable=True),
        sa.Column("web_session_id", sa.String(length=64), nullable=False),
        sa.Column("step_up_at", policy.models.UTCDateTime(), nullable=True),
        sa.Column("created_at", policy.models.UTCDateTime(), nullable=False),
        sa.Column("expires_at", policy.models.UTCDateTime(), nullable=False),
        sa.Column("consumed_at", policy.models.UTCDateTime(), nullable=True),
        sa.Column("consumed_node", sa.String(length=100), nullable=True),
        sa.ForeignKeyConstraint(
            ["device_id"], ["device.id"], name=op.f("fk_connect_ticket_device_id_device")
        ),
        sa.ForeignKeyConstraint(
            ["grant_id"], ["grant.id"], name=op.f("fk_connect_ticket_grant_id_grant")
        ),
        sa.ForeignKeyConstraint(
            ["session_id"],
            ["session.id"],
            name=op.f("fk_connect_ticket_session_id_session"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["staff_user_id"],
            ["staff_user.id"],
            name=op.f("fk_connect_ticket_staff_user_id_staff_user"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["vendor_user_id"],
            ["vendor_user.id"],
            name=op.f("fk_connect_ticket_vendor_user_id_vendor_user"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_connect_ticket")),
        sa.UniqueConstraint("token_hash", name=op.f("uq_connect_ticket_token_hash")),
    )
    with op.batch_alter_table("connect_ticket", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_connect_ticket_expires_at"), ["expires_at"], unique=False
        )
    # plain ALTER TABLE ADD COLUMN (a batch would copy the table on SQLite and drop the
    # policy-generation triggers of migration 0006 with it)
    op.add_column("device", sa.Column("observer_required", sa.Boolean(), nullable=True))
    for table in ("grant", "session"):
        op.add_column(
            table,
            sa.Column("observer_required", sa.Boolean(), nullable=False, server_default=sa.false()),
        )


def downgrade() -> None:
    for table in ("session", "grant", "device"):  # ALTER TABLE DROP COLUMN (SQLite 3.35+)
        op.drop_column(table, "observer_required")
    with op.batch_alter_table("connect_ticket", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_connect_ticket_expires_at"))
    op.drop_table("connect_ticket")
