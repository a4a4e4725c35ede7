"""The browser terminal: a front door onto the session core for vendors with only a browser.

After the browser door (``broker.door``) has redeemed a ``connect`` ticket, this checks
again what the gateway checks for OpenSSH vendors (the account may log in, the ticket's
grant is live for the device's ``ssh`` service now), opens the session core, logs in to
the device with the vaulted credential exactly as for ``ssh vendor1:pump-12@gateway``, and
relays: keystrokes from xterm.js to the device's PTY, the device's output (recorded first,
as the same asciicast the session page replays) to the browser. Window warnings, observers,
input pauses and the end reason arrive as ``notice`` and ``end`` messages.
"""

from __future__ import annotations

import asyncio
import time
from typing import TYPE_CHECKING

import asyncssh
import structlog
from sqlalchemy import select

from broker import messages
from broker.door import DoorError, Hello, Socket, read_until, receive_json, terminal_size
from broker.errors import BrokerError
from broker.session import Closing, LiveSession, Who
from policy import store
from policy.decide import decide_login, decide_target
from policy.models import Device
from policy.moderation import observer_required
from policy.tickets import Redeemed
from recorder.channel import AsciicastRecording, ChannelRecording
from recorder.errors import RecorderError
from recorder.storage import Sink

if TYPE_CHECKING:
    from broker.context import GatewayContext

log = structlog.get_logger(__name__)

TERM = "xterm-256color"
HIGH_WATER = 1024 * 1024  # output queued for the browser above this pauses the device
INPUT_LIMIT = 16 * 1024  # characters per input message (a paste is split by the page)
NO_OBSERVER = "a moderated session needs a staff observer, and none is watching"
PAUSED = "sallyport: input paused: this moderated session has no staff observer right now"


class WebTerminal:
    """One browser terminal session (``broker.session.FrontDoor``)."""

    def __init__(
        self, ctx: GatewayContext, sock: Socket, ticket: Redeemed, hello: Hello, source: str
    ) -> None:
        self.ctx, self.sock, self.ticket, self.hello = ctx, sock, ticket, hello
        self.source = source
        self.core: LiveSession | None = None
        self.recording: ChannelRecording | None = None
        self.upstream: asyncssh.SSHClientChannel[bytes] | None = None
        self.upstream_conn: asyncssh.SSHClientConnection | None = None
        self.size = (hello.cols, hello.rows)
        self.exit_status: int | None = None
        self.end_message: str | None = None
        self._told_paused = False
        self._device_paused = False
        self._stopped = asyncio.Event()

    async def run(self) -> None:
        """Open, relay until the session ends, then the one end path. A refusal before the
        session exists propagates (``DoorError``) for the door to tell and audit."""
        try:
            await self._open()
            assert self.core is not None
            await self._relay(self.core)
        except BrokerError as exc:  # DoorError, UpstreamError (device unreachable, bad key)
            if self.core is None:
                raise DoorError(exc.code, exc.message.removeprefix("sallyport: ")) from None
            self.core.end(exc.code, f"sallyport: {exc.message.removeprefix('sallyport: ')}")
        except RecorderError as exc:  # no recording, no session
            if self.core is None:
                raise DoorError("recording-failed", "the session cannot be recorded") from None
            self.core.recording_failed(exc)
        except Exception as exc:  # fail closed: an unexpected error ends the session
            log.exception("browser terminal failed")
            if self.core is None:
                raise DoorError("internal-error", "internal error; session refused") from None
            self.core.end(f"error:{type(exc).__name__}", "sallyport: internal error; closed")
        finally:
            if self.core is not None:
                await self._finish(self.core)

    # -- opening ----------------------------------------------------------------------

    async def _open(self) -> None:
        ctx, ticket = self.ctx, self.ticket
        now = ctx.now()
        user = await ctx.policy.vendor_login(ticket.actor)
        login = decide_login(store.user_view(user), now)
        if user is None or not login.allow or user.id != ticket.vendor_user_id:
            raise DoorError("login-refused", f"your account may not connect ({login.reason})")
        async with ctx.sessions() as db:
            name = await db.scalar(select(Device.name).where(Device.id == ticket.device_id))
        device = await ctx.policy.device(name) if name is not None else None
        if device is None or name is None:
            raise DoorError("device-unknown", "the device is no longer in the inventory")
        grants = [g for g in await ctx.policy.grants(user.id) if g.id == ticket.grant_id]
        decision = decide_target(name, True, ticket.service or "ssh", grants, now)
        if not decision.allow or decision.grant is None:
            await ctx.audit.record(
                "broker:target:deny", actor=user.login, device=name, client=self.source,
                reason=str(decision.reason), door="browser",
            )  # fmt: skip
            text = messages.target_refusal(decision, name).removeprefix("sallyport: ")
            raise DoorError(str(decision.reason), text)
        grant = decision.grant
        core = self.core = await LiveSession.open(
            ctx,
            Who(user.login, user.id, f"{self.source} (browser)"),
            device,
            grant,
            decision.window_end,
            self,
            service="ssh",
            kind="shell",
            command=None,
            moderated=observer_required(
                device.criticality,
                device.observer_required,
                grant.observer_required,
                ctx.settings.observer_for_life_sustaining,
            ),
        )
        core.terminal = self.size
        cols, rows = self.size
        started = time.time()

        def cast(sink: Sink) -> ChannelRecording:
            return AsciicastRecording(
                sink, width=cols, height=rows, started_at=started, term=TERM,
                command=None, title=f"{user.login} on {device.name} (browser)",
            )  # fmt: skip

        self.recording = await core.start_recording("shell.cast", cast, AsciicastRecording.format)

    async def _relay(self, core: LiveSession) -> None:
        self.sock.send(
            {
                "type": "ready",
                "role": "vendor",
                "session_id": core.session_id,
                "device": core.device.name,
                "ticket": core.grant.ticket_ref,
                "window_end": core.window_end.isoformat() if core.window_end else None,
                "moderated": core.moderated,
            }
        )
        self._send_input_state(core.input_allowed)
        self.notify(core.notice())
        if core.moderated and not core.input_allowed:
            self.notify(
                "sallyport: this session is moderated: nothing you type reaches the device "
                "until a staff observer has joined; waiting for one"
            )
        chan, self.upstream_conn = await self.ctx.devices.open_session(
            core.device,
            lambda: _DeviceSide(self),
            None,
            term_type=TERM,
            term_size=(*self.size, 0, 0),
            encoding=None,
        )
        if core.end_reason is not None:
            chan.close()
            return
        self.upstream = chan
        await read_until(self._read(core), self._stopped)  # a malformed message raises here

    async def _read(self, core: LiveSession) -> None:
        while core.end_reason is None:
            data = await receive_json(self.sock.ws)
            if data is None:
                core.mark_end("vendor-disconnect")
                return
            self._message(core, data)

    def _message(self, core: LiveSession, data: object) -> None:
        if not isinstance(data, dict):
            raise DoorError("malformed", "messages are JSON objects")
        kind = data.get("type")
        if kind == "input":
            text = data.get("data")
            if not isinstance(text, str) or len(text) > INPUT_LIMIT:
                raise DoorError("malformed", f"input is a string of at most {INPUT_LIMIT}")
            self._input(core, text.encode("utf-8", "replace"))
        elif kind == "resize":
            cols, rows = terminal_size(data)
            self._resize(core, cols, rows)
        else:
            raise DoorError("malformed", f"unknown message type {str(kind)[:40]!r}")

    def _input(self, core: LiveSession, data: bytes) -> None:
        core.touch()
        if not core.input_allowed:  # moderated, no observer: the keystrokes go nowhere
            if not self._told_paused:
                self._told_paused = True
                self.notify(PAUSED)
            return
        recording, upstream = self.recording, self.upstream
        assert recording is not None and upstream is not None
        if core.record(lambda: recording.input(data)):  # nothing reaches the device unrecorded
            upstream.write(data)

    def _resize(self, core: LiveSession, cols: int, rows: int) -> None:
        recording, upstream = self.recording, self.upstream
        assert recording is not None and upstream is not None
        self.size = (cols, rows)
        upstream.change_terminal_size(cols, rows)
        if core.record(lambda: recording.resize(cols, rows)):
            core.resized(cols, rows)

    # -- from the device --------------------------------------------------------------

    def from_device(self, data: bytes) -> None:
        core, recording = self.core, self.recording
        if core is None or recording is None or core.end_reason is not None:
            return
        core.touch()
        try:  # record first: nothing reaches the vendor unrecorded
            recording.output(data)
        except RecorderError as exc:
            core.recording_failed(exc)
            return
        core.output_recorded(data)
        self.sock.send_bytes(data)
        if self.sock.pending > HIGH_WATER and self.upstream is not None:
            self._device_paused = True
            self.upstream.pause_reading()
            self.ctx.tasks.spawn(self._resume_when_drained(), name="webterm-drain")

    async def _resume_when_drained(self) -> None:
        await self.sock.drained(HIGH_WATER // 4)
        if self.upstream is not None and self._device_paused:
            self._device_paused = False
            self.upstream.resume_reading()

    def device_closed(self, status: int | None) -> None:
        self.exit_status = status
        if self.core is not None:
            self.core.mark_end("exit")

    # -- broker.session.FrontDoor -----------------------------------------------------

    def notify(self, text: str) -> None:
        self.sock.send({"type": "notice", "text": text})

    def stop(self, reason: str, message: str | None) -> None:
        self.end_message = message
        self._stopped.set()

    def _send_input_state(self, allowed: bool) -> None:
        reason = "" if allowed else NO_OBSERVER
        self.sock.send({"type": "input", "allowed": allowed, "reason": reason})

    def input_changed(self, allowed: bool) -> None:
        self._told_paused = False
        self._send_input_state(allowed)
        self.notify(
            "sallyport: a staff observer has joined; your input reaches the device"
            if allowed
            else "sallyport: the last observer left; input paused until one joins again"
        )

    # -- the end ----------------------------------------------------------------------

    async def _finish(self, core: LiveSession) -> None:
        if self.upstream is not None:
            self.upstream.close()
        if self.upstream_conn is not None:  # closes it, or frees its slot when shared
            self.ctx.devices.release(self.upstream_conn)
        core.mark_end("closed")
        core.flush_recordings()  # what the vendor saw is in the file before the end shows
        reason = core.end_reason or "closed"
        message = self.end_message or _END_TEXT.get(reason, f"sallyport: session ended ({reason})")
        self.sock.send({"type": "end", "reason": reason, "message": message})
        await self.sock.close()
        await core.close(Closing(self.exit_status))


_END_TEXT = {
    "exit": "sallyport: the device closed the session",
    "vendor-disconnect": "sallyport: you closed the session",
}


class _DeviceSide(asyncssh.SSHClientSession[bytes]):
    def __init__(self, term: WebTerminal) -> None:
        self.term = term
        self.status: int | None = None

    def data_received(self, data: bytes, datatype: asyncssh.DataType) -> None:
        self.term.from_device(data)

    def exit_status_received(self, status: int) -> None:
        self.status = status

    def connection_lost(self, exc: Exception | None) -> None:
        self.term.device_closed(self.status)
