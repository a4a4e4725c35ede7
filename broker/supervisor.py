"""The session supervisor: every live session on this gateway process, ended when policy says.

Twice a second it asks the database which live sessions' grants were revoked and which
sessions a person asked to kill (the web and the CLI write those requests; whichever
gateway process holds the session acts on them), warns vendors before their window ends,
and ends sessions that have been idle or open too long. The decisions are pure functions
(``policy.supervise``); this module only gathers the facts and acts.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Protocol

import structlog
from sqlalchemy import select
from sqlalchemy.exc import SQLAlchemyError

from policy.models import Grant, Session
from policy.supervise import Limits, LiveFacts, next_action

if TYPE_CHECKING:
    from broker.context import GatewayContext

log = structlog.get_logger(__name__)

POLL_SECONDS = 0.5
DB_GRACE_SECONDS = 60.0


class Supervised(Protocol):
    """What the supervisor needs of a live session (read-only)."""

    @property
    def session_id(self) -> str | None: ...
    @property
    def grant_id(self) -> int | None: ...
    @property
    def window_end(self) -> datetime | None: ...
    @property
    def started(self) -> datetime: ...
    @property
    def last_activity(self) -> datetime: ...
    @property
    def idle_timeout(self) -> int | None: ...
    @property
    def max_session(self) -> int | None: ...

    def warn(self, text: str) -> None: ...

    def terminate(self, reason: str, message: str) -> None: ...


@dataclass
class _State:
    warned: set[int] = field(default_factory=set)


class Supervisor:
    def __init__(
        self,
        ctx: GatewayContext,
        limits: Limits,
        poll: float = POLL_SECONDS,
        db_grace: float = DB_GRACE_SECONDS,
    ) -> None:
        self.ctx = ctx
        self.limits = limits
        self.poll = poll
        self.live: dict[Supervised, _State] = {}
        self._task: asyncio.Task[None] | None = None
        self._wake = asyncio.Event()
        self.db_grace = db_grace
        self.db_lost_at: datetime | None = None

    def add(self, session: Supervised) -> None:
        self.live[session] = _State()

    def discard(self, session: Supervised) -> None:
        self.live.pop(session, None)

    def nudge(self) -> None:
        """Check now (an in-process revocation or kill was just written)."""
        self._wake.set()

    def start(self) -> None:
        if self._task is None:
            self._task = self.ctx.tasks.spawn(self._loop(), name="supervisor")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None

    async def shutdown(self, message: str) -> None:
        """Graceful stop: tell every vendor, end every session (its recording is sealed)."""
        for session in list(self.live):
            session.terminate("gateway-shutdown", message)

    async def _loop(self) -> None:
        while True:
            try:
                await asyncio.wait_for(self._wake.wait(), self.poll)
            except TimeoutError:
                pass
            self._wake.clear()
            try:
                await self.check()
                self.db_lost_at = None
            except (SQLAlchemyError, OSError) as exc:
                self._database_unreachable(exc)

    def _database_unreachable(self, exc: Exception) -> None:
        """Without the database nothing can be revoked or audited: live sessions may go on
        for ``db_grace`` seconds (a restart or a failover), then they close."""
        now = self.ctx.now()
        if self.db_lost_at is None:
            self.db_lost_at = now
            log.error("database unreachable; live sessions will close", error=str(exc),
                      grace=self.db_grace, live=len(self.live))  # fmt: skip
        if (now - self.db_lost_at).total_seconds() >= self.db_grace:
            for session in list(self.live):
                self.discard(session)
                session.terminate(
                    "database-unreachable",
                    "sallyport: the gateway lost its database; session closed",
                )

    async def check(self) -> None:
        sessions = [s for s in self.live if s.session_id is not None]
        if not sessions:
            return
        revoked, killed = await self._requests(sessions)
        now = self.ctx.now()
        for session in sessions:
            state = self.live.get(session)
            if state is None:
                continue
            facts = LiveFacts(
                now=now,
                started=session.started,
                last_activity=session.last_activity,
                window_end=session.window_end,
                revoked=revoked.get(session.grant_id or -1),
                killed_by=killed.get(session.session_id or ""),
                warned=frozenset(state.warned),
                idle_timeout=session.idle_timeout,
                max_session=session.max_session,
            )
            action = next_action(facts, self.limits)
            if action.warned:
                state.warned.update(action.warned)
                session.warn(action.message)
            elif action.end_reason is not None:
                self.discard(session)
                session.terminate(action.end_reason, action.message)

    async def _requests(
        self, sessions: Iterable[Supervised]
    ) -> tuple[dict[int, str], dict[str, str]]:
        grant_ids = {s.grant_id for s in sessions if s.grant_id is not None}
        session_ids = {s.session_id for s in sessions if s.session_id is not None}
        async with self.ctx.sessions() as db:
            revoked_rows = await db.execute(
                select(Grant.id, Grant.revoked_by).where(
                    Grant.id.in_(grant_ids), Grant.revoked_at.is_not(None)
                )
            )
            killed_rows = await db.execute(
                select(Session.id, Session.kill_requested_by).where(
                    Session.id.in_(session_ids), Session.kill_requested_at.is_not(None)
                )
            )
        revoked = {gid: by or "unknown" for gid, by in revoked_rows}
        killed = {sid: by or "unknown" for sid, by in killed_rows}
        return revoked, killed
