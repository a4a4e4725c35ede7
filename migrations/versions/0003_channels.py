"""channels: segment networks, grant transfer rule, forwarded byte counts

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-23 10:45:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("segment", schema=None) as batch_op:
        batch_op.add_column(sa.Column("networks", sa.JSON(), nullable=False, server_default="[]"))
    with op.batch_alter_table("grant", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column(
                "transfers", sa.String(length=16), nullable=False, server_default="read-write"
            )
        )
    with op.batch_alter_table("session", schema=None) as batch_op:
        batch_op.add_column(sa.Column("bytes_from_vendor", sa.BigInteger(), nullable=True))
        batch_op.add_column(sa.Column("bytes_from_device", sa.BigInteger(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("session", schema=None) as batch_op:
        batch_op.drop_column("bytes_from_device")
        batch_op.drop_column("bytes_from_vendor")
    with op.batch_alter_table("grant", schema=None) as batch_op:
        batch_op.drop_column("transfers")
    with op.batch_alter_table("segment", schema=None) as batch_op:
        batch_op.drop_column("networks")
