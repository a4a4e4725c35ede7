"""The browser door: a WebSocket endpoint (``/door``) served by the gateway process.

The portal never carries session bytes. It hands the browser a one-time connect ticket
(``policy.tickets``: 60 s, single use, bound to user, grant, device, service and portal
session, issued after a TOTP step-up) and the browser redeems it here, on whichever
gateway node the load balancer picks. Sessions live where the supervisor lives.

Before the ticket is checked a socket costs little and is bounded: the Origin must be the
portal's (no cross-site WebSocket hijacking), the ``hello`` must come within
``HELLO_SECONDS``, unauthenticated sockets are limited per source and in total, and a
frame over ``MAX_FRAME`` bytes or one that is not JSON closes the socket with a reason.

The protocol (JSON text frames, binary frames for terminal output) is in
``docs/ARCHITECTURE.md``. A ``connect`` ticket opens a browser terminal
(``broker.webterm``); a ``watch`` ticket joins a live session as a read-only observer
(``Watcher``), which also holds the door of a moderated session.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Coroutine
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import structlog
from aiohttp import WSCloseCode, WSMsgType, web

from broker.errors import BrokerError
from broker.preauth import Refusal, record_refusal
from policy.models import StaffUser
from policy.moderation import may_observe
from policy.tickets import Redeemed, TicketRefused, redeem

if TYPE_CHECKING:
    from broker.context import GatewayContext
    from broker.session import LiveSession

log = structlog.get_logger(__name__)

PATH = "/door"
HELLO_SECONDS = 10.0
MAX_FRAME = 64 * 1024
WATCHER_QUEUE_BYTES = 4 * 1024 * 1024  # a watcher this far behind is dropped, never waited for
PRE_TICKET = frozenset({"malformed", "frame-too-large", "hello-timeout", "ticket-malformed"})
CLOSE_REFUSED = 4403
CLOSE_MALFORMED = 4400


class DoorError(BrokerError):
    """A refusal told to the browser (``error`` message) and audited."""


@dataclass
class Hello:
    ticket: str
    cols: int = 80
    rows: int = 24


def parse_hello(data: Any) -> Hello:
    if not isinstance(data, dict) or data.get("type") != "hello":
        raise DoorError("malformed", "the first message must be a hello with the ticket")
    ticket = data.get("ticket")
    if not isinstance(ticket, str) or not 0 < len(ticket) <= 200:
        raise DoorError("malformed", "the hello carries no ticket")
    return Hello(ticket, *terminal_size(data))


def terminal_size(data: dict[str, Any]) -> tuple[int, int]:
    cols, rows = data.get("cols", 80), data.get("rows", 24)
    if not (isinstance(cols, int) and isinstance(rows, int)):
        raise DoorError("malformed", "cols and rows must be whole numbers")
    if not (2 <= cols <= 1000 and 2 <= rows <= 500):
        raise DoorError("malformed", "terminal size out of range (2-1000 x 2-500)")
    return cols, rows


class Socket:
    """One browser WebSocket: ordered sends through a queue, so callbacks from the SSH side
    (which cannot await) never reorder or block; ``pending`` bytes tell back-pressure."""

    def __init__(self, ws: web.WebSocketResponse) -> None:
        self.ws = ws
        self.pending = 0
        self._low = 0
        self._drained = asyncio.Event()
        self._queue: asyncio.Queue[tuple[str, Any] | None] = asyncio.Queue()
        self._writer: asyncio.Task[None] | None = None

    def start(self, ctx: GatewayContext) -> None:
        self._writer = ctx.tasks.spawn(self._write(), name="door-writer")

    def send(self, message: dict[str, Any]) -> None:
        self._queue.put_nowait(("json", message))

    def send_bytes(self, data: bytes) -> None:
        self.pending += len(data)
        self._queue.put_nowait(("bytes", data))

    async def _write(self) -> None:
        while (item := await self._queue.get()) is not None:
            kind, payload = item
            try:
                if kind == "bytes":
                    await self.ws.send_bytes(payload)
                    self.pending -= len(payload)
                    if self.pending <= self._low:
                        self._drained.set()
                else:
                    await self.ws.send_str(json.dumps(payload))
            except (ConnectionError, RuntimeError):
                self.pending = 0  # the browser is gone; the reader sees the close
                self._drained.set()

    async def drained(self, low: int) -> None:
        """Until at most ``low`` bytes wait to be sent (or the socket is done)."""
        self._low = low
        self._drained.clear()
        if self.pending > low and not self.ws.closed:
            await self._drained.wait()

    async def close(self, code: int = WSCloseCode.OK, message: str = "") -> None:
        """Send what is queued, then close."""
        self._queue.put_nowait(None)
        if self._writer is not None:
            await asyncio.gather(self._writer, return_exceptions=True)
        await self.ws.close(code=code, message=message.encode()[:120])


async def receive_json(ws: web.WebSocketResponse, within: float | None = None) -> Any:
    """The next message as JSON; None when the browser closed. Raises DoorError on a
    frame that is too large, binary or not JSON."""
    msg = await ws.receive(timeout=within)
    if msg.type in (WSMsgType.CLOSE, WSMsgType.CLOSING, WSMsgType.CLOSED):
        return None
    if msg.type == WSMsgType.ERROR:
        raise DoorError("frame-too-large", f"message refused: over {MAX_FRAME} bytes or invalid")
    if msg.type != WSMsgType.TEXT:
        raise DoorError("malformed", "messages to the gateway are JSON text")
    try:
        return json.loads(msg.data)
    except ValueError:
        raise DoorError("malformed", "message is not JSON") from None


async def read_until(reader: Coroutine[Any, Any, None], stop: asyncio.Event) -> None:
    """Run ``reader`` (a socket's message loop) until it returns or ``stop`` is set; an
    error of the reader's is raised here."""
    reading = asyncio.ensure_future(reader)
    stopped = asyncio.ensure_future(stop.wait())
    try:
        await asyncio.wait({reading, stopped}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        finished = reading.done()
        for task in (reading, stopped):
            task.cancel()
        await asyncio.gather(reading, stopped, return_exceptions=True)
    if finished:
        reading.result()


@dataclass
class BrowserDoor:
    ctx: GatewayContext
    runner: web.AppRunner | None = None
    site: web.TCPSite | None = None

    async def start(self, host: str, port: int) -> int:
        app = web.Application()
        app.router.add_get(PATH, self.handle)
        self.runner = web.AppRunner(app, access_log=None, handle_signals=False)
        await self.runner.setup()
        self.site = web.TCPSite(self.runner, host, port)
        await self.site.start()
        server = self.site._server  # aiohttp offers no public way to the bound port
        assert server is not None
        return int(server.sockets[0].getsockname()[1])  # type: ignore[attr-defined]

    async def close(self) -> None:
        if self.runner is not None:
            await self.runner.cleanup()
            self.runner = None

    async def stop_accepting(self) -> None:
        if self.site is not None:
            site, self.site = self.site, None
            await site.stop()

    async def handle(self, request: web.Request) -> web.StreamResponse:
        source = request.remote or "unknown"
        origin = request.headers.get("Origin", "")
        expected = self.ctx.settings.portal_origin()
        if origin.lower() != expected:
            record_refusal(self.ctx, source, "origin", listener="browser-door", origin=origin[:200])
            return web.Response(
                status=403, text=f"sallyport: WebSocket from origin {origin!r} refused\n"
            )
        admission = self.ctx.door_preauth.admit(source)
        if isinstance(admission, Refusal):
            record_refusal(self.ctx, source, admission.reason, listener="browser-door")
            return web.Response(
                status=429,
                text=f"sallyport: {admission.message}\n",
                headers={"Retry-After": str(max(1, round(admission.retry_after)))},
            )
        ws = web.WebSocketResponse(max_msg_size=MAX_FRAME, heartbeat=30, autoping=True)
        await ws.prepare(request)
        sock = Socket(ws)
        sock.start(self.ctx)
        try:
            try:
                hello = parse_hello(await receive_json(ws, HELLO_SECONDS))
                redeemed = await self._redeem(hello.ticket)
            except DoorError:
                self.ctx.door_preauth.failed(source)
                raise
            finally:  # the ticket was shown (or the socket is done): no longer pre-auth
                admission.release()
            self.ctx.door_preauth.succeeded(source)
            if redeemed.purpose == "connect":
                from broker.webterm import WebTerminal

                await WebTerminal(self.ctx, sock, redeemed, hello, source).run()
            else:
                await Watcher(self.ctx, sock, redeemed, source).run()
        except TimeoutError:
            await self._refuse(sock, source, DoorError("hello-timeout", "no ticket in time"))
        except DoorError as exc:
            await self._refuse(sock, source, exc)
        return ws

    async def _redeem(self, token: str) -> Redeemed:
        try:
            async with self.ctx.sessions() as db:
                return await redeem(db, token, now=self.ctx.now(), node=self.ctx.settings.node_name)
        except TicketRefused as exc:
            raise DoorError(exc.code, exc.message) from None

    async def _refuse(self, sock: Socket, source: str, exc: DoorError) -> None:
        if exc.code in PRE_TICKET:  # a flood of these must not flood the audit chain
            record_refusal(self.ctx, source, exc.code, listener="browser-door")
        else:
            await self.ctx.audit.record("broker:door:deny", reason=exc.code, client=source)
        sock.send({"type": "error", "reason": exc.code, "message": f"sallyport: {exc.message}"})
        code = CLOSE_MALFORMED if exc.code in ("malformed", "frame-too-large") else CLOSE_REFUSED
        await sock.close(code, exc.code)


class Watcher:
    """A staff member watching a live session, read-only, from the bytes the recorder wrote.
    On a moderated session the watcher is the observer that lets the vendor's input pass;
    ``{"type":"end"}`` ends the session."""

    def __init__(self, ctx: GatewayContext, sock: Socket, ticket: Redeemed, source: str) -> None:
        self.ctx, self.sock, self.ticket, self.source = ctx, sock, ticket, source
        self.name = ticket.actor
        self.core: LiveSession | None = None
        self._gone = asyncio.Event()

    async def run(self) -> None:
        core = await self._find()
        self.core = core
        cols, rows = core.terminal or (80, 24)
        self.sock.send(
            {
                "type": "ready",
                "role": "observer",
                "session_id": core.session_id,
                "device": core.device.name,
                "vendor": core.who.login,
                "ticket": core.grant.ticket_ref,
                "window_end": core.window_end.isoformat() if core.window_end else None,
                "moderated": core.moderated,
                "cols": cols,
                "rows": rows,
            }
        )
        self.sock.send_bytes(core.backlog())
        await core.join(self)
        self.sock.send({"type": "observers", "names": [o.name for o in core.observers]})
        try:
            await self._read(core)
        finally:
            await core.leave(self)
            await self.sock.close()

    async def _find(self) -> LiveSession:
        async with self.ctx.sessions() as db:
            staff = await db.get(StaffUser, self.ticket.staff_user_id)
        if staff is None or staff.disabled or not may_observe(staff.roles):
            raise DoorError("not-observer", "only biomed and security staff may watch sessions")
        core = self.ctx.supervisor.find(self.ticket.session_id or "")
        if core is None:
            raise DoorError(
                "session-not-here",
                "that session is not live on this gateway node "
                f"({self.ctx.settings.node_name}); it may have ended",
            )
        return core  # type: ignore[return-value]

    async def _read(self, core: LiveSession) -> None:
        await read_until(self._messages(core), self._gone)

    async def _messages(self, core: LiveSession) -> None:
        while True:
            try:
                data = await receive_json(self.sock.ws)
            except DoorError as exc:
                self.sock.send({"type": "error", "reason": exc.code, "message": exc.message})
                return
            if data is None:
                return
            if isinstance(data, dict) and data.get("type") == "end":
                await core.audit("broker:observer:end", observer=self.name)
                core.end("observer-ended", f"sallyport: {self.name} (observer) ended the session")
                return
            # anything else from a watcher is ignored: watching is read-only

    # -- broker.session.Observer ---------------------------------------------------------

    def output(self, data: bytes) -> None:
        if self.sock.pending > WATCHER_QUEUE_BYTES:
            self.notice("sallyport: this view fell too far behind and was closed")
            self._gone.set()
            return
        self.sock.send_bytes(data)

    def notice(self, text: str) -> None:
        self.sock.send({"type": "notice", "text": text})
        if self.core is not None:
            self.sock.send({"type": "observers", "names": [o.name for o in self.core.observers]})

    def resize(self, cols: int, rows: int) -> None:
        self.sock.send({"type": "resize", "cols": cols, "rows": rows})

    def ended(self, reason: str, message: str) -> None:
        self.sock.send({"type": "end", "reason": reason, "message": message})
        self._gone.set()
