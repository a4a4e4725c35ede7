"""policy generation: a counter triggers advance with every write a gateway decision reads

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-04 17:40:00

Gateways cache vendor logins, devices and grants (``policy.cache``) and trust an entry only
while ``policy_generation.value`` has not moved. The triggers below advance it in the same
transaction as the write, whoever writes (gateway, web, CLI, an operator's SQL), so a
committed change is never hidden by a cache. ``vendor_user`` counts only the columns a
login decision reads: the TOTP step that every login advances does not empty the caches.

Also indexes ``vendor_key.vendor_user_id`` (the login lookup joins on it).
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0006"
down_revision: str | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

BUMP = "UPDATE policy_generation SET value = value + 1 WHERE id = 1"

# table -> the columns whose update counts (None: any update)
WATCHED: dict[str, tuple[str, ...] | None] = {
    "vendor_user": ("login", "disabled", "locked_until", "password_hash", "totp_secret"),
    "vendor_key": None,
    "segment": None,
    "device": None,
    "device_service": None,
    "grant": None,
    "grant_device": None,
}


def _update_of(columns: tuple[str, ...] | None) -> str:
    return "UPDATE" if columns is None else f"UPDATE OF {', '.join(columns)}"


def upgrade() -> None:
    table = op.create_table(
        "policy_generation",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("value", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_policy_generation")),
    )
    op.bulk_insert(table, [{"id": 1, "value": 0}])
    with op.batch_alter_table("vendor_key", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_vendor_key_vendor_user_id"), ["vendor_user_id"], unique=False
        )
    if op.get_bind().dialect.name == "postgresql":
        op.execute(
            "CREATE FUNCTION policy_generation_bump() RETURNS trigger LANGUAGE plpgsql AS "
            f"$$ BEGIN {BUMP}; RETURN NULL; END $$"
        )
        for name, columns in WATCHED.items():
            for event in ("INSERT OR DELETE OR TRUNCATE", _update_of(columns)):
                suffix = "upd" if event.startswith("UPDATE") else "ins_del"
                op.execute(
                    f'CREATE TRIGGER policy_gen_{name}_{suffix} AFTER {event} ON "{name}" '
                    "FOR EACH STATEMENT EXECUTE FUNCTION policy_generation_bump()"
                )
        return
    for name, columns in WATCHED.items():  # SQLite: row triggers only
        for event in ("INSERT", "DELETE", _update_of(columns)):
            suffix = event.split()[0].lower()
            op.execute(
                f'CREATE TRIGGER policy_gen_{name}_{suffix} AFTER {event} ON "{name}" '
                f"BEGIN {BUMP}; END"
            )


def downgrade() -> None:
    postgresql = op.get_bind().dialect.name == "postgresql"
    for name in WATCHED:
        suffixes = ("ins_del", "upd") if postgresql else ("insert", "delete", "update")
        for suffix in suffixes:
            on = f' ON "{name}"' if postgresql else ""
            op.execute(f"DROP TRIGGER IF EXISTS policy_gen_{name}_{suffix}{on}")
    if postgresql:
        op.execute("DROP FUNCTION IF EXISTS policy_generation_bump()")
    with op.batch_alter_table("vendor_key", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_vendor_key_vendor_user_id"))
    op.drop_table("policy_generation")
