"""The session core: one live vendor session, whatever front door it came through.

A front door (SSH shell/exec/sftp/scp in ``broker.relay``, ``-L`` forwards in
``broker.forward``, the browser terminal in ``broker.webterm``) translates its protocol into
calls on a ``LiveSession``; it holds no policy of its own:

- ``LiveSession.open(...)`` writes the Session row and its start event, and puts the
  session under the supervisor (window end and warnings, revocation, kill, idle, maximum
  length, database loss);
- ``start_recording`` creates a recording (any ``Recordable``: asciicast, stream, pcap)
  and registers it with the flusher; a write that fails ends the session (fail closed);
- ``record_input`` / ``record_output`` / ``record_resize`` write a terminal's traffic
  and hand the output, as recorded, to staff watching live;
- ``input_allowed`` answers for moderated sessions (``policy.moderation``): no vendor
  input reaches the device until a staff observer has joined;
- ``end(reason, message)`` is how anything but the door itself ends the session; the
  door stops relaying and calls ``close(...)``, the one end path that seals the
  recordings and writes the end (``broker.records``).

The door implements ``FrontDoor``: three callbacks, all synchronous and never raising.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

import structlog

from broker import records
from policy.decide import GrantView
from policy.models import Device
from policy.notice import session_notice
from recorder.errors import RecorderError
from recorder.storage import Sink, StoredObject

if TYPE_CHECKING:
    from broker.context import GatewayContext

log = structlog.get_logger(__name__)

BACKLOG_BYTES = 256 * 1024  # terminal output kept for a watcher who joins late


class FrontDoor(Protocol):
    """What the core asks of the protocol adapter holding the vendor's side."""

    def notify(self, text: str) -> None:
        """Show ``text`` to the vendor (a window warning, an observer joined, ...)."""

    def stop(self, reason: str, message: str | None) -> None:
        """The session ends now (``reason``; ``message`` tells the vendor why, if given):
        stop relaying, then call ``LiveSession.close``."""

    def input_changed(self, allowed: bool) -> None:
        """Moderation opened (or closed) the way from the vendor to the device."""


class Recordable(Protocol):
    """A recording the core owns: asciicast, stream, pcap, ..."""

    @property
    def key(self) -> str: ...
    def flush(self) -> None: ...
    def close(self, complete: bool = True) -> StoredObject: ...


R = TypeVar("R", bound=Recordable)


class Observer(Protocol):
    """A staff member watching live (``broker.door``): gets what the recorder wrote."""

    @property
    def name(self) -> str: ...
    def output(self, data: bytes) -> None: ...
    def notice(self, text: str) -> None: ...
    def resize(self, cols: int, rows: int) -> None: ...
    def ended(self, reason: str, message: str) -> None: ...


@dataclass(frozen=True)
class Who:
    """The vendor a session belongs to, as the front door authenticated them."""

    login: str
    user_id: int
    client: str  # address:port (with " (jump)" or " (browser)" as the door says)


@dataclass
class Closing:
    """What the door knows at the end (exit status, byte counts)."""

    exit_status: int | None = None
    bytes_from_vendor: int | None = None
    bytes_from_device: int | None = None


@dataclass(eq=False)  # hashable by identity: the supervisor keeps sessions in a dict
class LiveSession:
    ctx: GatewayContext
    who: Who
    device: Device
    grant: GrantView
    service: str
    kind: str
    command: str | None
    window_end: datetime | None
    door: FrontDoor
    moderated: bool = False
    session_id: str | None = None
    end_reason: str | None = None
    recordings: list[Recordable] = field(default_factory=list)
    observers: list[Observer] = field(default_factory=list)
    terminal: tuple[int, int] | None = None  # cols, rows of a terminal session
    _backlog: deque[bytes] = field(default_factory=deque)
    _backlog_size: int = 0
    _input_open: asyncio.Event = field(default_factory=asyncio.Event)
    _closed: bool = False

    def __post_init__(self) -> None:
        self.started = self.last_activity = self.ctx.now()
        self.log = log.bind(vendor=self.who.login, device=self.device.name)
        self._update_input()

    # -- what the supervisor reads (broker.supervisor.Supervised) -------------------------

    @property
    def grant_id(self) -> int:
        return self.grant.id

    @property
    def idle_timeout(self) -> int | None:
        return self.grant.idle_timeout

    @property
    def max_session(self) -> int | None:
        return self.grant.max_session

    def warn(self, text: str) -> None:
        self.door.notify(text)
        for observer in list(self.observers):
            observer.notice(text)

    def terminate(self, reason: str, message: str) -> None:
        self.end(reason, message)

    # -- opening ----------------------------------------------------------------------

    @classmethod
    async def open(
        cls,
        ctx: GatewayContext,
        who: Who,
        device: Device,
        grant: GrantView,
        window_end: datetime | None,
        door: FrontDoor,
        *,
        service: str,
        kind: str,
        command: str | None,
        moderated: bool = False,
    ) -> LiveSession:
        """The Session row and its start event (both or neither: a failure raises and the
        session is refused), then supervision from this moment on."""
        session = cls(ctx, who, device, grant, service, kind, command, window_end, door, moderated)
        session.session_id = await records.open_session(session)
        session.log = session.log.bind(session_id=session.session_id)
        ctx.supervisor.add(session)
        return session

    async def start_recording(self, name: str, make: Callable[[Sink], R], fmt: str) -> R:
        """Create the recording ``name`` (``make`` builds it on the storage sink), its
        Recording row, and its place in the flusher (a failed write ends the session)."""
        assert self.session_id is not None
        key = records.recording_key(self.session_id, name)
        recording = make(self.ctx.storage.create(key))
        self.recordings.append(recording)
        await records.add_recording(self.ctx, self.session_id, key, fmt)
        self.ctx.flusher.add(recording, self._recording_failed)
        return recording

    # -- traffic ----------------------------------------------------------------------

    def touch(self) -> None:
        self.last_activity = self.ctx.now()

    def record(self, write: Callable[[], None]) -> bool:
        """Run one recorder write; False (and the session ends) if it failed."""
        try:
            write()
        except RecorderError as exc:
            self.recording_failed(exc)
            return False
        return True

    def notice(self) -> str:
        """What the session tells the vendor first: recorded, the ticket, the window end."""
        recurrence = self.grant.recurrence
        return session_notice(
            self.grant.ticket_ref,
            self.window_end,
            recurrence.tz if recurrence is not None else None,
            self.ctx.now(),
        )

    def output_recorded(self, data: bytes) -> None:
        """Output the recorder has written: to the watchers, and for a terminal kept (the
        last ``BACKLOG_BYTES``) for watchers who join later."""
        for observer in self.observers:
            observer.output(data)
        if self.terminal is None or not data:
            return
        self._backlog.append(data)
        self._backlog_size += len(data)
        while self._backlog_size > BACKLOG_BYTES and len(self._backlog) > 1:
            self._backlog_size -= len(self._backlog.popleft())

    def resized(self, cols: int, rows: int) -> None:
        self.terminal = (cols, rows)
        for observer in list(self.observers):
            observer.resize(cols, rows)

    # -- moderation and watchers ------------------------------------------------------

    @property
    def input_allowed(self) -> bool:
        return self._input_open.is_set()

    async def wait_input_allowed(self) -> bool:
        """Until an observer has joined (moderated) or the session ended; True if allowed."""
        while not self._input_open.is_set() and self.end_reason is None:
            await self._input_open.wait()
        return self.end_reason is None

    def backlog(self) -> bytes:
        return b"".join(self._backlog)

    async def join(self, observer: Observer) -> None:
        """A staff member starts watching (and, on a moderated session, holds the door)."""
        self.observers.append(observer)
        await self.audit("broker:observer:join", observer=observer.name)
        self._tell_everyone(f"sallyport: {observer.name} is watching this session")
        self._update_input()

    async def leave(self, observer: Observer) -> None:
        if observer not in self.observers:
            return
        self.observers.remove(observer)
        await self.audit("broker:observer:leave", observer=observer.name)
        if self.end_reason is None:
            self._tell_everyone(f"sallyport: {observer.name} stopped watching")
            self._update_input()

    def _tell_everyone(self, text: str) -> None:
        self.door.notify(text)
        for observer in list(self.observers):
            observer.notice(text)

    def _update_input(self) -> None:
        from policy.moderation import input_allowed

        was = self._input_open.is_set()
        now = input_allowed(self.moderated, len(self.observers))
        if now == was:
            return
        if now:
            self._input_open.set()
        else:
            self._input_open.clear()
        if self.session_id is not None:  # not at birth: the door tells that itself
            self.door.input_changed(now)

    # -- the end ----------------------------------------------------------------------

    def end(self, reason: str, message: str | None = None) -> None:
        """End the session for ``reason`` (first reason wins), telling the vendor why."""
        if self.end_reason is not None:
            return
        self.end_reason = reason
        self.ctx.supervisor.discard(self)
        for observer in list(self.observers):
            observer.ended(reason, message or f"session ended ({reason})")
        self._input_open.set()  # wakes wait_input_allowed, which then sees the end
        self.door.stop(reason, message)

    def mark_end(self, reason: str) -> None:
        """The door saw the end itself (the vendor left, the device exited)."""
        if self.end_reason is None:
            self.end(reason)

    def _recording_failed(self, recording: object, exc: RecorderError) -> None:
        self.recording_failed(exc)

    def recording_failed(self, exc: RecorderError) -> None:
        """No recording, no session (fail closed)."""
        if self.end_reason is not None:
            return
        self.log.error("recording failed", error=exc.message)
        self.end(
            "recording-failed", "sallyport: the session recording cannot be written; session closed"
        )

    def flush_recordings(self) -> None:
        """What the vendor saw reaches the files before the vendor sees the end."""
        for recording in self.recordings:
            self.ctx.flusher.discard(recording)
            self.record(recording.flush)

    async def close(self, closing: Closing | None = None) -> None:
        """The one end path: supervision off, watchers told, recordings sealed (hashes in
        the chain), the Session row and its end event written."""
        if self._closed:
            return
        self._closed = True
        self.mark_end("closed")
        self.ctx.supervisor.discard(self)
        self.flush_recordings()
        for observer in list(self.observers):
            self.observers.remove(observer)
            await self.audit("broker:observer:leave", observer=observer.name)
        complete = self.end_reason != "recording-failed"
        stored = []
        for recording in self.recordings:  # fsync off the event loop: other sessions go on
            stored.append(await asyncio.to_thread(recording.close, complete))
        closing = closing or Closing()
        assert self.session_id is not None and self.end_reason is not None
        end = records.SessionEnd(
            self.end_reason,
            closing.exit_status,
            stored,
            closing.bytes_from_vendor,
            closing.bytes_from_device,
        )
        await records.close_session(self, end)

    # -- evidence ---------------------------------------------------------------------

    async def audit(self, tag: str, **detail: Any) -> None:
        """An audit event of this session (who, which device, from where)."""
        await self.ctx.audit.record(
            tag,
            actor=self.who.login,
            device=self.device.name,
            session_id=self.session_id,
            client=self.who.client,
            **detail,
        )
