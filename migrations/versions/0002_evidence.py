"""evidence: audit hash chain, signed checkpoints, device snapshots

Existing audit events are renumbered 1..n in their id order (nothing refers to audit
ids) and chained with the ``sallyport-audit/1`` encoding; the chain head records the end.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-23 10:32:38.616809
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime

import sqlalchemy as sa
from alembic import op

import policy.models
from recorder import chain

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "audit_chain_head",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("last_event_id", sa.Integer(), nullable=False),
        sa.Column("last_hash", sa.String(length=64), nullable=False),
        sa.Column("checkpoints", sa.Integer(), nullable=False),
        sa.Column("checkpoint_event_id", sa.Integer(), nullable=False),
        sa.Column("checkpoint_at", policy.models.UTCDateTime(), nullable=False),
        sa.Column("updated_at", policy.models.UTCDateTime(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_audit_chain_head")),
    )
    op.create_table(
        "audit_checkpoint",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("event_id", sa.Integer(), nullable=False),
        sa.Column("hash", sa.String(length=64), nullable=False),
        sa.Column("at", policy.models.UTCDateTime(), nullable=False),
        sa.Column("key_id", sa.String(length=64), nullable=False),
        sa.Column("signature", sa.String(length=128), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_audit_checkpoint")),
    )
    with op.batch_alter_table("audit_checkpoint", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_audit_checkpoint_event_id"), ["event_id"], unique=False
        )

    with op.batch_alter_table("audit_event", schema=None) as batch_op:
        batch_op.add_column(sa.Column("prev_hash", sa.String(length=64), nullable=True))
        batch_op.add_column(sa.Column("hash", sa.String(length=64), nullable=True))
    _chain_existing_events()
    with op.batch_alter_table("audit_event", schema=None) as batch_op:
        batch_op.alter_column("prev_hash", existing_type=sa.String(length=64), nullable=False)
        batch_op.alter_column("hash", existing_type=sa.String(length=64), nullable=False)

    with op.batch_alter_table("session", schema=None) as batch_op:
        batch_op.add_column(sa.Column("device_snapshot", sa.JSON(), nullable=True))


_events = sa.table(
    "audit_event",
    sa.column("id", sa.Integer()),
    sa.column("at", policy.models.UTCDateTime()),
    sa.column("tag", sa.String()),
    sa.column("actor", sa.String()),
    sa.column("device", sa.String()),
    sa.column("session_id", sa.String()),
    sa.column("request_id", sa.Integer()),
    sa.column("detail", sa.JSON()),
    sa.column("prev_hash", sa.String()),
    sa.column("hash", sa.String()),
)
_head = sa.table(
    "audit_chain_head",
    sa.column("id", sa.Integer()),
    sa.column("last_event_id", sa.Integer()),
    sa.column("last_hash", sa.String()),
    sa.column("checkpoints", sa.Integer()),
    sa.column("checkpoint_event_id", sa.Integer()),
    sa.column("checkpoint_at", policy.models.UTCDateTime()),
    sa.column("updated_at", policy.models.UTCDateTime()),
)


def _chain_existing_events() -> None:
    conn = op.get_bind()
    rows = conn.execute(sa.select(_events).order_by(_events.c.id)).mappings().all()
    prev = chain.GENESIS
    for position, row in enumerate(rows, start=1):
        if row["id"] != position:  # ascending, so the new id is always free
            conn.execute(sa.update(_events).where(_events.c.id == row["id"]).values(id=position))
        detail = chain.normalize(dict(row["detail"] or {}))
        content = chain.event_content(
            id=position,
            at=row["at"],
            tag=row["tag"],
            actor=row["actor"],
            device=row["device"],
            session_id=row["session_id"],
            request_id=row["request_id"],
            detail=detail,
        )
        digest = chain.link_hash(prev, chain.content_hash(content))
        conn.execute(
            sa.update(_events)
            .where(_events.c.id == position)
            .values(prev_hash=prev, hash=digest, detail=detail)
        )
        prev = digest
    now = datetime.now(UTC)
    conn.execute(
        sa.insert(_head).values(
            id=1,
            last_event_id=len(rows),
            last_hash=prev,
            checkpoints=0,
            checkpoint_event_id=0,
            checkpoint_at=now,
            updated_at=now,
        )
    )


def downgrade() -> None:
    with op.batch_alter_table("session", schema=None) as batch_op:
        batch_op.drop_column("device_snapshot")

    with op.batch_alter_table("audit_event", schema=None) as batch_op:
        batch_op.drop_column("hash")
        batch_op.drop_column("prev_hash")

    with op.batch_alter_table("audit_checkpoint", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_audit_checkpoint_event_id"))

    op.drop_table("audit_checkpoint")
    op.drop_table("audit_chain_head")
