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
from typing import TYPE_CHECKING, Any, Protocol

import asyncpg
import structlog
from sqlalchemy import select
from sqlalchemy.engine import make_url
from sqlalchemy.exc import SQLAlchemyError

from policy.models import Grant, Session
from policy.store import NOTIFY_CHANNEL
from policy.supervise import Limits, LiveFacts, next_action
from recorder import metrics

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


_Request = tuple[str | None, datetime | None]  # who asked, and when


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
        self._listener: asyncio.Task[None] | None = None
        self._wake = asyncio.Event()
        self.db_grace = db_grace
        self.db_lost_at: datetime | None = None

    def add(self, session: Supervised) -> None:
        self.live[session] = _State()

    def discard(self, session: Supervised) -> None:
        self.live.pop(session, None)

    def find(self, session_id: str) -> Supervised | None:
        """The live session with this id on this gateway process, if any."""
        return next((s for s in self.live if s.session_id == session_id), None)

    def nudge(self) -> None:
        """Check now (an in-process revocation or kill was just written)."""
        self._wake.set()

    def start(self) -> None:
        if self._task is None:
            self._task = self.ctx.tasks.spawn(self._loop(), name="supervisor")
            self._listener = self.ctx.tasks.spawn(self._listen(), name="supervisor-listen")

    async def _listen(self) -> None:
        """On PostgreSQL, wake on NOTIFY (sent with every revocation and kill) instead of
        waiting for the next poll; the poll stays as the fallback."""
        url = make_url(self.ctx.settings.database_url)
        if url.get_backend_name() != "postgresql":
            return
        while True:
            try:
                conn = await asyncpg.connect(
                    host=url.host, port=url.port, user=url.username,
                    password=url.password, database=url.database,
                )  # fmt: skip
            except (OSError, asyncpg.PostgresError) as exc:
                log.warning("cannot listen for revocations; polling", error=str(exc))
                await asyncio.sleep(5)
                continue
            try:
                await self._hold(conn)
            finally:
                await conn.close()

    async def _hold(self, conn: Any) -> None:
        lost = asyncio.Event()
        conn.add_termination_listener(lambda *_args: lost.set())
        await conn.add_listener(NOTIFY_CHANNEL, lambda *_args: self.nudge())
        await lost.wait()  # until the connection drops; then the caller reconnects

    async def stop(self) -> None:
        for task in (self._task, self._listener):
            if task is not None:
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)
        self._task = self._listener = None

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
            await self.check()

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
        try:
            revoked, killed = await self._requests(sessions)
            self.db_lost_at = None
        except (SQLAlchemyError, OSError) as exc:  # windows and idle limits still apply
            revoked, killed = {}, {}
            self._database_unreachable(exc)
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
                revoked=revoked.get(session.grant_id or -1, (None, None))[0],
                killed_by=killed.get(session.session_id or "", (None, None))[0],
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
                asked = {
                    "revoked": revoked.get(session.grant_id or -1, (None, None))[1],
                    "killed": killed.get(session.session_id or "", (None, None))[1],
                }.get(action.end_reason)
                if asked is not None:
                    metrics.revocation_latency((now - asked).total_seconds())

    async def _requests(
        self, sessions: Iterable[Supervised]
    ) -> tuple[dict[int, _Request], dict[str, _Request]]:
        grant_ids = {s.grant_id for s in sessions if s.grant_id is not None}
        session_ids = {s.session_id for s in sessions if s.session_id is not None}
        async with self.ctx.sessions() as db:
            revoked_rows = await db.execute(
                select(Grant.id, Grant.revoked_by, Grant.revoked_at).where(
                    Grant.id.in_(grant_ids), Grant.revoked_at.is_not(None)
                )
            )
            killed_rows = await db.execute(
                select(Session.id, Session.kill_requested_by, Session.kill_requested_at).where(
                    Session.id.in_(session_ids), Session.kill_requested_at.is_not(None)
                )
            )
        revoked: dict[int, _Request] = {gid: (by or "unknown", at) for gid, by, at in revoked_rows}
        killed: dict[str, _Request] = {sid: (by or "unknown", at) for sid, by, at in killed_rows}
        return revoked, killed
