"""workflow: requests, approvals, invites, tokens, web sessions

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-23 12:53:20

Columns added to existing tables carry a server default so existing rows stay valid.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

import policy.models

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "login_failure",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("login", sa.String(length=64), nullable=False),
        sa.Column("address", sa.String(length=100), nullable=False),
        sa.Column("at", policy.models.UTCDateTime(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_login_failure")),
    )
    with op.batch_alter_table("login_failure", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_login_failure_address"), ["address"], unique=False)
        batch_op.create_index(batch_op.f("ix_login_failure_login"), ["login"], unique=False)

    op.create_table(
        "web_session",
        sa.Column("id", sa.String(length=64), nullable=False),
        sa.Column("data", sa.JSON(), nullable=False),
        sa.Column("created_at", policy.models.UTCDateTime(), nullable=False),
        sa.Column("expires_at", policy.models.UTCDateTime(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_web_session")),
    )
    with op.batch_alter_table("web_session", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_web_session_expires_at"), ["expires_at"], unique=False)

    op.create_table(
        "invite",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("token_hash", sa.String(length=64), nullable=False),
        sa.Column("kind", sa.String(length=16), nullable=False),
        sa.Column("vendor_id", sa.Integer(), nullable=True),
        sa.Column("roles", sa.JSON(), nullable=False),
        sa.Column("email", sa.String(length=254), nullable=False),
        sa.Column("created_by", sa.String(length=100), nullable=False),
        sa.Column("created_at", policy.models.UTCDateTime(), nullable=False),
        sa.Column("expires_at", policy.models.UTCDateTime(), nullable=False),
        sa.Column("used_at", policy.models.UTCDateTime(), nullable=True),
        sa.Column("used_by", sa.String(length=100), nullable=True),
        sa.ForeignKeyConstraint(
            ["vendor_id"], ["vendor.id"], name=op.f("fk_invite_vendor_id_vendor")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_invite")),
        sa.UniqueConstraint("token_hash", name=op.f("uq_invite_token_hash")),
    )
    op.create_table(
        "api_token",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("token_hash", sa.String(length=64), nullable=False),
        sa.Column("name", sa.String(length=100), nullable=False),
        sa.Column("staff_user_id", sa.Integer(), nullable=True),
        sa.Column("vendor_user_id", sa.Integer(), nullable=True),
        sa.Column("created_by", sa.String(length=100), nullable=False),
        sa.Column("created_at", policy.models.UTCDateTime(), nullable=False),
        sa.Column("last_used_at", policy.models.UTCDateTime(), nullable=True),
        sa.Column("revoked_at", policy.models.UTCDateTime(), nullable=True),
        sa.ForeignKeyConstraint(
            ["staff_user_id"],
            ["staff_user.id"],
            name=op.f("fk_api_token_staff_user_id_staff_user"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["vendor_user_id"],
            ["vendor_user.id"],
            name=op.f("fk_api_token_vendor_user_id_vendor_user"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_api_token")),
        sa.UniqueConstraint("token_hash", name=op.f("uq_api_token_token_hash")),
    )
    op.create_table(
        "vendor_device",
        sa.Column("vendor_id", sa.Integer(), nullable=False),
        sa.Column("device_id", sa.Integer(), nullable=False),
        sa.ForeignKeyConstraint(
            ["device_id"],
            ["device.id"],
            name=op.f("fk_vendor_device_device_id_device"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["vendor_id"],
            ["vendor.id"],
            name=op.f("fk_vendor_device_vendor_id_vendor"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("vendor_id", "device_id", name=op.f("pk_vendor_device")),
    )
    with op.batch_alter_table("access_request", schema=None) as batch_op:
        batch_op.add_column(sa.Column("recurrence", sa.JSON(), nullable=True))
        batch_op.add_column(
            sa.Column("filed_by", sa.String(length=100), nullable=False, server_default="")
        )
        batch_op.add_column(sa.Column("revision", sa.Integer(), nullable=False, server_default="1"))
        batch_op.add_column(sa.Column("override_reason", sa.Text(), nullable=True))
        batch_op.add_column(
            sa.Column("decision_reason", sa.Text(), nullable=False, server_default="")
        )
        batch_op.add_column(sa.Column("updated_at", policy.models.UTCDateTime(), nullable=True))

    with op.batch_alter_table("approval", schema=None) as batch_op:
        batch_op.add_column(sa.Column("staff_user_id", sa.Integer(), nullable=True))
        batch_op.add_column(
            sa.Column("binding", sa.String(length=64), nullable=False, server_default="")
        )
        batch_op.create_foreign_key(
            batch_op.f("fk_approval_staff_user_id_staff_user"),
            "staff_user",
            ["staff_user_id"],
            ["id"],
        )

    with op.batch_alter_table("device", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column("maintenance_windows", sa.JSON(), nullable=False, server_default="[]")
        )
        batch_op.add_column(sa.Column("updated_at", policy.models.UTCDateTime(), nullable=True))

    with op.batch_alter_table("grant", schema=None) as batch_op:
        batch_op.add_column(sa.Column("recurrence", sa.JSON(), nullable=True))

    with op.batch_alter_table("staff_user", schema=None) as batch_op:
        batch_op.add_column(sa.Column("totp_last_step", sa.Integer(), nullable=True))
        batch_op.add_column(sa.Column("locked_until", policy.models.UTCDateTime(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("staff_user", schema=None) as batch_op:
        batch_op.drop_column("locked_until")
        batch_op.drop_column("totp_last_step")

    with op.batch_alter_table("grant", schema=None) as batch_op:
        batch_op.drop_column("recurrence")

    with op.batch_alter_table("device", schema=None) as batch_op:
        batch_op.drop_column("updated_at")
        batch_op.drop_column("maintenance_windows")

    with op.batch_alter_table("approval", schema=None) as batch_op:
        batch_op.drop_constraint(
            batch_op.f("fk_approval_staff_user_id_staff_user"), type_="foreignkey"
        )
        batch_op.drop_column("binding")
        batch_op.drop_column("staff_user_id")

    with op.batch_alter_table("access_request", schema=None) as batch_op:
        batch_op.drop_column("updated_at")
        batch_op.drop_column("decision_reason")
        batch_op.drop_column("override_reason")
        batch_op.drop_column("revision")
        batch_op.drop_column("filed_by")
        batch_op.drop_column("recurrence")

    op.drop_table("vendor_device")
    op.drop_table("api_token")
    op.drop_table("invite")
    with op.batch_alter_table("web_session", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_web_session_expires_at"))

    op.drop_table("web_session")
    with op.batch_alter_table("login_failure", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_login_failure_login"))
        batch_op.drop_index(batch_op.f("ix_login_failure_address"))

    op.drop_table("login_failure")
