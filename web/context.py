"""What every web handler needs, in one object stored on the application.

``WebContext`` is built once per process (``build_web_context`` or by hand in tests) and
read by handlers as ``request.app[CTX]`` (or ``web.context.ctx(request)``). The clock is
injectable so tests can move time (session expiry, TOTP steps, rate-limit windows)
without sleeping. The web process never imports ``broker``: everything it shares with
the gateway goes through the database.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from aiohttp import web
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from policy.config import Settings
from policy.keyfiles import load_vault
from policy.models import utcnow
from policy.vault import Vault
from recorder.audit import AuditLog


@dataclass
class WebContext:
    sessions: async_sessionmaker[AsyncSession]
    settings: Settings
    vault: Vault
    audit: AuditLog
    clock: Callable[[], datetime] = utcnow
    notifier: Any | None = None  # the workflow notifier (email, webhooks), when configured


CTX: web.AppKey[WebContext] = web.AppKey("sallyport_web_context", WebContext)


def ctx(request: web.Request) -> WebContext:
    """The context of the application serving ``request``."""
    return request.app[CTX]


def build_web_context(
    settings: Settings,
    sessions: async_sessionmaker[AsyncSession],
    *,
    audit: AuditLog | None = None,
    notifier: Any | None = None,
) -> WebContext:
    """A context from the settings: the vault key from the data dir, the audit log
    sharing ``sessions`` (pass the gateway's ``audit`` when both run in one process)."""
    return WebContext(
        sessions=sessions,
        settings=settings,
        vault=load_vault(settings.vault_key_path),
        audit=audit if audit is not None else AuditLog.from_settings(sessions, settings),
        notifier=notifier,
    )


@dataclass(frozen=True)
class Principal:
    """Who is making a request: a staff or vendor user, signed in or holding an API token.

    ``roles`` is the staff user's roles ("biomed", "security", "admin"), or ``{"vendor"}``
    for a vendor user; it is read from the database on every request, so a role removed
    or a user disabled takes effect at the next click.
    """

    kind: str  # "staff" | "vendor"
    id: int
    login: str
    roles: frozenset[str]
    via: str  # "session" | "token"
    display_name: str = ""
    vendor_id: int | None = None  # the vendor organization, for vendor users
    token_name: str | None = None  # the API token's name, when via == "token"

    @property
    def name(self) -> str:
        """The audit actor string: ``staff:alice``, ``vendor:vendor1``."""
        return f"{self.kind}:{self.login}"

    def has_any(self, *roles: str) -> bool:
        return bool(self.roles & set(roles))


PRINCIPAL: web.RequestKey[Principal] = web.RequestKey("sallyport_principal", Principal)
