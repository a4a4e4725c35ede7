"""Vendor authentication: an SSH key (or password) AND a TOTP code, with stock OpenSSH.

asyncssh completes authentication after a single method. We gate its success: when the
first factor (publickey or password) succeeds we answer "partial success" and offer only
keyboard-interactive, whose single prompt asks for the verification code. Only when both
have passed does the connection proceed. Every callback denies unless it says why not.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from dataclasses import replace
from enum import Enum
from typing import TYPE_CHECKING, Any

import asyncssh
import structlog
from sqlalchemy.exc import SQLAlchemyError

from broker import messages
from broker.target import Target, parse_username
from policy import store, totp
from policy.decide import decide_login
from policy.passwords import verify_password
from policy.vault import TOTP_SECRET
from recorder import metrics

if TYPE_CHECKING:
    from broker.context import GatewayContext

log = structlog.get_logger(__name__)

PROMPT = "Verification code: "


class Factor(Enum):
    NONE = 0
    FIRST = 1  # key or password proven
    BOTH = 2  # and the TOTP code


class VendorServer(asyncssh.SSHServer):
    """One vendor connection's authentication state and channel policy."""

    def __init__(self, ctx: GatewayContext) -> None:
        self.ctx = ctx
        self.conn: asyncssh.SSHServerConnection | None = None
        self.peer = ""
        self.target: Target | None = None
        self.user: store.VendorLogin | None = None
        self.factor = Factor.NONE
        self._pending: str | None = None  # the method whose success asyncssh reports next
        self._first_method = ""
        self._refusals: list[str] = []
        self.auth_started = False  # the peer began to log in (a failure counts, broker.preauth)

    # -- connection ---------------------------------------------------------------

    def connection_made(self, conn: asyncssh.SSHServerConnection) -> None:
        self.conn = conn
        peer = conn.get_extra_info("peername") or ("", 0)
        self.peer = f"{peer[0]}:{peer[1]}"
        original: Callable[[], Awaitable[None]] = conn.send_userauth_success

        async def gated_success() -> None:
            await self._on_method_success(original)

        # asyncssh has no multi-factor hook; intercept the success it would send.
        conn.send_userauth_success = gated_success  # type: ignore[method-assign]
        self.refuse_forwarding_requests(conn)

    def refuse_forwarding_requests(self, conn: asyncssh.SSHServerConnection) -> None:
        """Agent and X11 forwarding are refused (asyncssh's options already say no); these
        hooks make each refusal an audit event and a note on the vendor's terminal."""

        async def no_agent() -> bool:
            self._refusals.append("agent forwarding")
            await self._audit("broker:forward:deny", reason="agent-forwarding")
            return False

        async def no_x11(*_args: object) -> None:
            self._refusals.append("X11 forwarding")
            await self._audit("broker:forward:deny", reason="x11-forwarding")

        conn.create_agent_listener = no_agent  # type: ignore[method-assign]
        conn.attach_x11_listener = no_x11  # type: ignore[method-assign, assignment]

    def take_refusals(self) -> list[str]:
        refusals, self._refusals = self._refusals, []
        return refusals

    def connection_lost(self, exc: Exception | None) -> None:
        self.conn = None

    async def _on_method_success(self, complete: Callable[[], Awaitable[None]]) -> None:
        assert self.conn is not None
        method, self._pending = self._pending, None
        if method in ("publickey", "password") and self.factor is Factor.NONE:
            self.factor = Factor.FIRST
            self._first_method = method
            self.conn.send_userauth_failure(True)  # partial success: now the code
        elif method == "totp" and self.factor is Factor.FIRST:
            self.factor = Factor.BOTH
            await self._audit("broker:login:success", method=self._first_method + "+totp")
            await complete()
        else:
            self.conn.send_userauth_failure(False)

    # -- first factor -------------------------------------------------------------

    async def begin_auth(self, username: str) -> bool:
        if not self.auth_started:  # the system use notification, before any prompt
            self.auth_started = True
            self._banner(
                self.ctx.settings.banner_text().replace("\r\n", "\n").replace("\n", "\r\n")
            )
        self.factor, self._pending, self.user = Factor.NONE, None, None
        self.target = parse_username(username)
        if self.target is None:
            self._banner(messages.BAD_USERNAME)
            await self._audit("broker:login:fail", reason="bad-username", username=username[:64])
            return True
        try:
            self.user = await self.ctx.policy.vendor_login(self.target.login)
        except (SQLAlchemyError, OSError) as exc:  # fail closed: no database, no new session
            log.error("login refused: database unreachable", error=str(exc), login=self.login)
            self._banner(messages.NO_DATABASE)
            self.user = None
            await self._audit("broker:login:deny", reason="database-unreachable")  # spooled
            return True
        decision = decide_login(store.user_view(self.user), self.ctx.now())
        if not decision.allow:
            if self.user is not None and self.user.locked_until is not None:
                self._banner(messages.LOCKED.format(until=self.user.locked_until))
            elif self.user is not None and self.user.disabled:
                self._banner(messages.DISABLED)
            await self._audit("broker:login:fail", reason=str(decision.reason))
            self.user = None  # every method fails from here on
        return True  # authentication is always required

    def public_key_auth_supported(self) -> bool:
        return self.factor is Factor.NONE

    def validate_public_key(self, username: str, key: asyncssh.SSHKey) -> bool:
        if self.user is None:
            return False
        if key.get_fingerprint("sha256") in self.user.fingerprints:
            self._pending = "publickey"  # asyncssh still verifies the signature
            return True
        return False

    def password_auth_supported(self) -> bool:
        return self.factor is Factor.NONE

    async def validate_password(self, username: str, password: str) -> bool:
        if self.user is None or not verify_password(password, self.user.password_hash):
            await self._audit("broker:login:fail", reason="bad-password")
            return False
        self._pending = "password"
        return True

    # -- second factor ------------------------------------------------------------

    def kbdint_auth_supported(self) -> bool:
        return self.factor is Factor.FIRST and self.user is not None

    def get_kbdint_challenge(
        self, username: str, lang: str, submethods: str
    ) -> tuple[str, str, str, list[tuple[str, bool]]]:
        return ("", "", "", [(PROMPT, False)])

    async def validate_kbdint_response(self, username: str, responses: Sequence[str]) -> bool:
        user = self.user
        if user is None or user.totp_secret is None or len(responses) != 1:
            return False
        now = self.ctx.now()
        secret = self.ctx.vault.open_text(user.totp_secret, TOTP_SECRET)
        check = totp.check_code(secret, responses[0], now, user.totp_last_step)
        if check.ok and check.step is not None:
            async with self.ctx.sessions() as db:
                if await store.accept_totp_step(db, user.id, check.step):
                    self.user = replace(user, totp_last_step=check.step)
                    self._pending = "totp"
                    return True
            check = totp.TotpCheck(totp.TotpOutcome.REPLAYED, check.step)
        await self._mfa_failed(user, check.outcome, now)
        return False

    async def _mfa_failed(
        self, user: store.VendorLogin, outcome: totp.TotpOutcome, now: Any
    ) -> None:
        text = {
            totp.TotpOutcome.REPLAYED: messages.MFA_REPLAYED,
            totp.TotpOutcome.MALFORMED: messages.MFA_MALFORMED,
        }.get(outcome, messages.MFA_WRONG)
        async with self.ctx.sessions() as db:
            until = await store.note_totp_failure(db, user.id, now)
        tag = "broker:mfa:replay" if outcome is totp.TotpOutcome.REPLAYED else "broker:mfa:fail"
        await self._audit(tag, reason=str(outcome))
        if until is not None:
            self.user = None
            await self._audit("broker:mfa:lockout", until=until.isoformat())
            text = messages.LOCKED.format(until=until)
        self._banner(text)

    # -- helpers ------------------------------------------------------------------

    @property
    def login(self) -> str:
        return self.target.login if self.target else ""

    def _banner(self, text: str) -> None:
        if self.conn is not None:
            self.conn.send_auth_banner(text + "\r\n")

    async def _audit(self, tag: str, **detail: Any) -> None:
        if tag.endswith((":deny", ":fail", ":replay", ":lockout")):
            metrics.refused(str(detail.get("reason", tag)))
        device = self.target.device if self.target else None
        await self.ctx.audit.record(
            tag, actor=self.login, device=device, client=self.peer, **detail
        )
