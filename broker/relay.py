"""The SSH front door for shell, exec, sftp and scp channels: vendor <-> gateway <-> device.

The vendor's session channel is paired with a session channel the gateway opens on the
device, logging in with the vaulted credential. Data, EOF, window changes, signals and
exit status pass through; each side's back-pressure pauses the other side's reader. The
session itself (its rows, recording, supervision, watchers, moderation and end) is the
session core's (``broker.session``); this module only translates SSH to it. Any failure
to record ends the session (fail closed).

On a moderated session (``policy.moderation``) a terminal's keystrokes are dropped until
a staff observer has joined (the vendor is told), while the device's output still flows
and is recorded; a channel without a terminal (exec, sftp, scp) does not reach the device
at all until then, and pauses when the last observer leaves.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING

import asyncssh
import structlog

from broker import messages
from broker.errors import BrokerError
from broker.grants import render_grants
from broker.session import Closing, LiveSession, Who
from broker.transfers import (
    FileTransfer,
    TransferRefusal,
    TransferRefused,
    TransferTap,
    transfer_tap,
)
from policy.decide import Decision, decide_target
from policy.models import Device
from policy.moderation import observer_required
from recorder.channel import AsciicastRecording, ChannelRecording, StreamRecording
from recorder.errors import RecorderError
from recorder.storage import Sink

if TYPE_CHECKING:
    from broker.auth import VendorServer

log = structlog.get_logger(__name__)

SERVICE = "ssh"


class VendorSession(asyncssh.SSHServerSession[bytes]):
    """The vendor's side of one shell/exec channel."""

    def __init__(self, server: VendorServer) -> None:
        self.server = server
        self.ctx = server.ctx
        self.chan: asyncssh.SSHServerChannel[bytes] | None = None
        self.term: str | None = None
        self.size = (80, 24)
        self.modes: Mapping[int, int] = {}
        self.kind = "shell"
        self.command: str | None = None
        self.subsystem: str | None = None
        self.tap: TransferTap | None = None
        self.env: dict[bytes | str, bytes | str] = {}
        self.upstream: asyncssh.SSHClientChannel[bytes] | None = None
        self.upstream_conn: asyncssh.SSHClientConnection | None = None
        self.recording: ChannelRecording | None = None
        self.core: LiveSession | None = None
        self.end_reason: str | None = None
        self._pending: list[bytes] = []
        self._pending_eof = False
        self._done = asyncio.Event()
        self._told_paused = False
        self._vendor_gone = False
        self.exit_status: int | None = None
        self.exit_signal: tuple[str, bool, str] | None = None
        self.log = log.bind(vendor=server.login, device=server.target and server.target.device)

    # -- asyncssh callbacks: what the vendor asks for ------------------------------------

    def connection_made(self, chan: asyncssh.SSHServerChannel[bytes]) -> None:
        self.chan = chan

    def pty_requested(
        self, term_type: str, term_size: tuple[int, int, int, int], term_modes: Mapping[int, int]
    ) -> bool:
        self.term, self.size, self.modes = term_type, (term_size[0], term_size[1]), term_modes
        return True  # a terminal for the device shell; recorded as asciicast

    def shell_requested(self) -> bool:
        self.kind = "shell"
        return True  # relayed to the device's own shell

    def exec_requested(self, command: str) -> bool:
        self.kind, self.command = "exec", command
        return True  # relayed to the device as the same command

    def subsystem_requested(self, subsystem: str) -> bool:
        # sftp is relayed through the transfer tap; any other subsystem is accepted only
        # to tell the vendor why it is refused (see _run)
        self.kind = "sftp" if subsystem == "sftp" else "subsystem"
        self.subsystem = subsystem
        return True

    def session_started(self) -> None:
        self.ctx.tasks.spawn(self._run(), name="vendor-session")

    @property
    def session_id(self) -> str | None:
        return self.core.session_id if self.core is not None else None

    def data_received(self, data: bytes, datatype: asyncssh.DataType) -> None:
        if self._done.is_set():
            return
        core = self.core
        if core is not None:
            core.touch()
        if self.upstream is None:
            self._pending.append(data)
            return
        assert core is not None
        if not core.input_allowed:  # moderated, no observer: the keystrokes go nowhere
            if not self._told_paused:
                self._told_paused = True
                self.notify(PAUSED)
            return
        if not self._record(lambda r: r.input(data)):  # nothing reaches the device unrecorded
            return
        if self.tap is not None:
            data, reply = self.tap.client(data)
            self._tap_events()
            if reply and self.chan is not None:
                self._record(lambda r: r.output(reply))
                self.chan.write(reply)
        if data:
            self.upstream.write(data)

    def eof_received(self) -> bool:
        if self.upstream is None:
            self._pending_eof = True
        else:
            self.upstream.write_eof()
        return True  # keep the vendor channel half-open until the device finishes

    def terminal_size_changed(self, width: int, height: int, pixwidth: int, pixheight: int) -> None:
        self.size = (width, height)
        if self.upstream is not None:
            self.upstream.change_terminal_size(width, height, pixwidth, pixheight)
            if self._record(lambda r: r.resize(width, height)) and self.core is not None:
                self.core.resized(width, height)

    def signal_received(self, signal: str) -> None:
        if self.upstream is not None:
            self.upstream.send_signal(signal)

    def break_received(self, msec: int) -> bool:
        if self.upstream is not None:
            self.upstream.send_break(msec)
            return True
        return False

    def pause_writing(self) -> None:
        if self.upstream is not None:
            self.upstream.pause_reading()

    def resume_writing(self) -> None:
        if self.upstream is not None:
            self.upstream.resume_reading()

    def connection_lost(self, exc: Exception | None) -> None:
        self._vendor_gone = True
        self._end("vendor-disconnect")

    # -- from the device --------------------------------------------------------------

    def from_device(self, data: bytes, datatype: asyncssh.DataType) -> None:
        chan, recording, core = self.chan, self.recording, self.core
        if chan is None or core is None or self._done.is_set():
            return
        core.touch()
        if self.tap is not None:
            data = self.tap.server(data) if not datatype else data
            self._tap_events()
        if recording is not None:  # record first: nothing reaches the vendor unrecorded
            try:
                recording.output(data, 2 if datatype else 1)
            except RecorderError as exc:
                core.recording_failed(exc)
                return
            if self.tap is None:  # terminal and command output is what watchers see
                core.output_recorded(data)
        chan.write(data, datatype)

    # -- the session ------------------------------------------------------------------

    async def _run(self) -> None:
        assert self.chan is not None
        target = self.server.target
        # This task's log lines (audit included) carry who and what; the context is the
        # task's own copy, so concurrent sessions do not mix.
        structlog.contextvars.bind_contextvars(
            vendor=self.server.login, device=target.device if target else None
        )
        try:
            await self._report_refused_requests()
            if self.kind == "subsystem":
                await self._refuse_subsystem()
                return
            if target is None or target.device is None:
                await self._list_grants()
                return
            device, decision = await self._authorize(target.device)
            if device is None or not decision.allow:
                return
            await self._open(device, decision)
            await self._done.wait()
        except BrokerError as exc:
            self._refuse(exc.message)
            self._end(exc.code)
        except RecorderError as exc:  # no recording, no session
            self._refuse(f"sallyport: the session cannot be recorded ({exc.message}); refused")
            self._end("recording-failed")
        except Exception as exc:  # fail closed: an unexpected error ends the session
            self.log.exception("session failed")
            self._refuse("sallyport: internal error; session closed")
            self._end(f"error:{type(exc).__name__}")
        finally:
            await self._finish()

    async def _report_refused_requests(self) -> None:
        """Tell the vendor about refused agent/X11 forwarding and environment variables."""
        for feature in self.server.take_refusals():
            self._refuse(f"sallyport: {feature} is not allowed; request refused")
        assert self.chan is not None
        env = self.chan.get_environment()
        self.env = {k: v for k, v in env.items() if env_allowed(k)}
        refused = sorted(k for k in env if not env_allowed(k))
        if refused:
            self._refuse(
                "sallyport: environment variables not passed to the device (only TERM, "
                f"LANG and LC_*): {', '.join(refused)}"
            )
            await self.server._audit("broker:env:deny", names=refused)

    async def _refuse_subsystem(self) -> None:
        self._refuse(f"sallyport: subsystem '{self.subsystem}' is not allowed")
        await self.server._audit(
            "broker:channel:deny", reason="subsystem", subsystem=self.subsystem
        )
        self.end_reason = "denied"

    async def _list_grants(self) -> None:
        assert self.chan is not None
        assert self.server.user is not None
        grants = await self.ctx.policy.grants(self.server.user.id)
        settings = self.ctx.settings
        port = settings.gateway_public_port
        host = settings.gateway_public_host
        hint = f"ssh -p {port} {self.server.login}:DEVICE@{host}"
        self.chan.write(render_grants(grants, self.ctx.now(), self.term is not None, hint))
        self.device_closed(0, None)

    async def _authorize(self, name: str) -> tuple[Device | None, Decision]:
        user = self.server.user
        assert user is not None
        now = self.ctx.now()
        device = await self.ctx.policy.device(name)
        grants = await self.ctx.policy.grants(user.id)
        decision = decide_target(name, device is not None, SERVICE, grants, now)
        if not decision.allow:
            self._refuse(messages.target_refusal(decision, name))
            await self.server._audit("broker:target:deny", reason=str(decision.reason))
            self.end_reason = "denied"
        return device, decision

    async def _open(self, device: Device, decision: Decision) -> None:
        assert self.chan is not None and decision.grant is not None and self.server.user
        grant = decision.grant
        settings = self.ctx.settings
        core = self.core = await LiveSession.open(
            self.ctx,
            Who(self.server.login, self.server.user.id, self.server.peer),
            device,
            grant,
            decision.window_end,
            self,
            service=SERVICE,
            kind=self.kind,
            command=self.command,
            moderated=observer_required(
                device.criticality,
                device.observer_required,
                grant.observer_required,
                settings.observer_for_life_sustaining,
            ),
        )
        self.log = self.log.bind(session_id=core.session_id)
        structlog.contextvars.bind_contextvars(session_id=core.session_id)
        if self.term:
            core.terminal = self.size
        self.recording = await self._start_recording(core)
        self.tap = transfer_tap(self.kind, self.command, grant.transfers)
        if self.tap is not None and self.tap.refusal is not None:
            await self._audit_transfer(self.tap.refusal)
            raise TransferRefused(self.tap.refusal.reason)
        self._refuse(core.notice())
        if core.moderated:
            self.notify(MODERATED if core.input_allowed else WAITING)
            if not self.term and not await core.wait_input_allowed():
                return  # no channel on the device until an observer holds the door
        # a channel on the device: on a shared connection when upstream_reuse is on
        chan, self.upstream_conn = await self.ctx.devices.open_session(
            device,
            lambda: DeviceSession(self),
            self.command,
            subsystem=self.subsystem if self.kind == "sftp" else None,
            term_type=self.term,
            term_size=(*self.size, 0, 0) if self.term else None,
            term_modes=self.modes or None,
            env=self.env or (),
            encoding=None,
        )
        if self._done.is_set():  # the vendor left or the window closed meanwhile
            chan.close()
            return
        self.upstream = chan
        for data in self._pending:
            self.data_received(data, None)
        self._pending.clear()
        if self._pending_eof:
            chan.write_eof()

    async def _start_recording(self, core: LiveSession) -> ChannelRecording:
        started = time.time()
        if self.term:
            width, height, term = self.size[0], self.size[1], self.term

            def cast(sink: Sink) -> ChannelRecording:
                return AsciicastRecording(
                    sink,
                    width=width,
                    height=height,
                    started_at=started,
                    term=term,
                    command=self.command,
                    title=f"{self.server.login} on {core.device.name}",
                )

            return await core.start_recording(f"{self.kind}.cast", cast, AsciicastRecording.format)

        def stream(sink: Sink) -> ChannelRecording:
            return StreamRecording(sink, started_at=started, command=self.command)

        return await core.start_recording(f"{self.kind}.sps", stream, StreamRecording.format)

    # -- what the session core asks of this door (broker.session.FrontDoor) ------------

    def notify(self, text: str) -> None:
        """A notice on the vendor's terminal (window ending soon, an observer, the end)."""
        self._refuse(("\r\n" if self.term else "") + text)

    def stop(self, reason: str, message: str | None) -> None:
        if message:
            self._refuse(message)
        self._end(reason)

    def input_changed(self, allowed: bool) -> None:
        if allowed:
            self._told_paused = False
            self.notify(RESUMED)
            if self.chan is not None and not self.term:
                self.chan.resume_reading()
        else:
            self.notify(PAUSED_NOW)
            if self.chan is not None and not self.term:
                self.chan.pause_reading()  # held, not dropped: a protocol stream stays whole

    def warn(self, text: str) -> None:
        self.notify(text)

    def _record(self, write: Callable[[ChannelRecording], None]) -> bool:
        recording, core = self.recording, self.core
        if recording is None or core is None:
            return True
        return core.record(lambda: write(recording))

    def _refuse(self, text: str) -> None:
        if self.chan is not None and not self._vendor_gone:
            try:
                self.chan.write_stderr(messages.line(text, self.term is not None))
            except (asyncssh.Error, OSError):
                pass

    def device_closed(self, status: int | None, signal: tuple[str, bool, str] | None) -> None:
        self.exit_status, self.exit_signal = status, signal
        self._end("exit")

    def _end(self, reason: str) -> None:
        if self.end_reason is None:
            self.end_reason = reason
        self._done.set()
        if self.core is not None:
            self.core.mark_end(reason)

    async def _finish(self) -> None:
        core = self.core
        if core is not None:
            core.mark_end(self.end_reason or "closed")
            self.end_reason = core.end_reason
        if self.upstream is not None:
            self.upstream.close()
        if self.upstream_conn is not None:  # closes it, or frees its slot when shared
            self.ctx.devices.release(self.upstream_conn)
        if core is not None:  # what the vendor saw reaches the file before the vendor sees the end
            core.flush_recordings()
            self.end_reason = core.end_reason
        self._close_vendor()
        if self.tap is not None:
            for event in self.tap.close():
                await self._audit_transfer(event)
        if core is not None:
            await core.close(Closing(self.exit_status))

    def _tap_events(self) -> None:
        assert self.tap is not None
        for event in self.tap.events():
            if isinstance(event, TransferRefusal):  # stock sftp shows only "Permission denied"
                reason = event.reason.removeprefix("sallyport: ")
                self._refuse(f"sallyport: {event.operation} {event.path}: {reason}")
            self.ctx.tasks.spawn(self._audit_transfer(event))
        if self.tap.desync is not None:
            self._refuse("sallyport: file transfer protocol not understood; session closed")
            self._end("transfer-tap-desync")

    async def _audit_transfer(self, event: FileTransfer | TransferRefusal) -> None:
        if isinstance(event, FileTransfer):
            await self.server._audit(
                "broker:transfer:file",
                session_id=self.session_id,
                path=event.path,
                direction=event.direction,
                size=event.size,
                sha256=event.sha256,
                complete=event.complete,
            )
        else:
            await self.server._audit(
                "broker:transfer:deny",
                session_id=self.session_id,
                operation=event.operation,
                path=event.path,
                reason=event.reason,
            )

    def _close_vendor(self) -> None:
        chan, self.chan = self.chan, None
        if chan is None or self._vendor_gone:
            return
        if self.end_reason != "exit":
            chan.exit(1)  # the gateway ended or refused it; the reason is on stderr
        elif self.exit_signal is not None:
            chan.exit_with_signal(*self.exit_signal)
        elif self.exit_status is not None:
            chan.exit(self.exit_status)
        else:
            chan.close()


MODERATED = "sallyport: this session is moderated: a staff observer is watching"
WAITING = (
    "sallyport: this session is moderated: nothing you type reaches the device until a "
    "staff observer has joined; waiting for one"
)
PAUSED = "sallyport: input paused: this moderated session has no staff observer right now"
PAUSED_NOW = "sallyport: the last observer left; input paused until a staff observer joins again"
RESUMED = "sallyport: a staff observer has joined; your input reaches the device"


def env_allowed(name: str) -> bool:
    return name in ("TERM", "LANG") or name.startswith("LC_")


class DeviceSession(asyncssh.SSHClientSession[bytes]):
    """The device's side: relays what the device sends back to the vendor."""

    def __init__(self, vendor: VendorSession) -> None:
        self.vendor = vendor
        self.status: int | None = None
        self.signal: tuple[str, bool, str] | None = None

    def data_received(self, data: bytes, datatype: asyncssh.DataType) -> None:
        self.vendor.from_device(data, datatype)

    def eof_received(self) -> bool:
        chan = self.vendor.chan
        if chan is not None:
            chan.write_eof()
        return True

    def exit_status_received(self, status: int) -> None:
        self.status = status

    def exit_signal_received(self, signal: str, core_dumped: bool, msg: str, lang: str) -> None:
        self.signal = (signal, core_dumped, msg)

    def pause_writing(self) -> None:
        if self.vendor.chan is not None:
            self.vendor.chan.pause_reading()

    def resume_writing(self) -> None:
        if self.vendor.chan is not None:
            self.vendor.chan.resume_reading()

    def connection_lost(self, exc: Exception | None) -> None:
        self.vendor.device_closed(self.status, self.signal)
