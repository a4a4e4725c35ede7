"""Who is acting: the person behind a web, API or CLI call, and what their roles let them do.

The web tier builds an ``Actor`` from its signed-in session or API token. The workflow
functions do not trust the roles it carries for staff: they read the staff user again
(``staff_roles``), so a role removed or an account disabled a second ago counts now. Only
CLI actors are taken at their word; whoever runs the CLI holds the database credentials
and could write the rows directly anyway.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any, Protocol

from sqlalchemy.ext.asyncio import AsyncSession

from policy.errors import Forbidden, PolicyError
from policy.models import StaffUser, VendorUser

KINDS = ("vendor", "staff")


class AuditSink(Protocol):
    """What the workflow needs of ``recorder.audit.AuditLog`` (policy does not import
    recorder: the dependency runs the other way)."""

    async def record(
        self,
        tag: str,
        *,
        actor: str = "",
        device: str | None = None,
        session_id: str | None = None,
        request_id: int | None = None,
        **detail: Any,
    ) -> None: ...


@dataclass(frozen=True)
class Actor:
    kind: str  # "vendor" or "staff"
    id: int
    login: str
    roles: frozenset[str] = field(default_factory=frozenset)
    via: str = "web"  # or "api" or "cli"

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"actor kind must be one of {KINDS}, got {self.kind!r}")

    @property
    def label(self) -> str:
        """``vendor:LOGIN`` or ``staff:LOGIN``: the audit actor and ``filed_by``."""
        return f"{self.kind}:{self.login}"

    @property
    def is_vendor(self) -> bool:
        return self.kind == "vendor"


async def staff_roles(db: AsyncSession, actor: Actor) -> frozenset[str]:
    """The roles a staff actor holds right now (none for vendors or disabled accounts)."""
    if actor.kind != "staff":
        return frozenset()
    if actor.via == "cli":
        return actor.roles
    user = await db.get(StaffUser, actor.id)
    if user is None or user.disabled or user.login != actor.login:
        return frozenset()
    return frozenset(user.roles)


async def require_staff(
    db: AsyncSession, actor: Actor, allowed: Iterable[str], action: str
) -> frozenset[str]:
    """The actor's roles, or Forbidden naming the roles that ``action`` needs."""
    wanted = frozenset(allowed)
    roles = await staff_roles(db, actor)
    if not roles & wanted:
        needed = " or ".join(sorted(wanted))
        raise Forbidden("role-required", f"{action} needs the {needed} role")
    return roles


async def require_active_vendor(db: AsyncSession, actor: Actor) -> VendorUser:
    """The vendor user behind a vendor actor, refused when it is gone or disabled."""
    user = await db.get(VendorUser, actor.id)
    if user is None or user.disabled or user.login != actor.login:
        raise Forbidden("account-disabled", f"vendor account {actor.login!r} is not active")
    return user


async def record_refusal(
    db: AsyncSession,
    audit: AuditSink,
    actor: Actor | str,
    tag: str,
    exc: PolicyError,
    **detail: Any,
) -> None:
    """End the caller's transaction (it may hold a lock the audit writer needs, and nothing
    in it is kept) and record why the action was refused."""
    await db.rollback()
    label = actor.label if isinstance(actor, Actor) else actor
    await audit.record(tag, actor=label, code=exc.code, message=exc.message, **detail)


@asynccontextmanager
async def refusals_recorded(
    db: AsyncSession,
    audit: AuditSink,
    actor: Actor | str,
    tag: str,
    **detail: Any,
) -> AsyncIterator[None]:
    """Wrap the checks of an action: a ``PolicyError`` they raise is recorded as a refusal
    (``record_refusal``) and goes on to the caller, so no check can forget the audit."""
    try:
        yield
    except PolicyError as exc:
        await record_refusal(db, audit, actor, tag, exc, **detail)
        raise
