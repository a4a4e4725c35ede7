"""Settings: one TOML file plus ``SALLYPORT_*`` environment overrides.

Relative paths in the file resolve against the directory that holds the file; with no
file they resolve against ``data_dir``.
"""

from __future__ import annotations

import os
import socket
import tomllib
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from policy.errors import ConfigError

ENV_PREFIX = "SALLYPORT_"
DEFAULT_BANNER = (
    "Authorized use only. This is the hospital's gateway to clinical device networks.\n"
    "Every session is recorded and may be monitored; by continuing you consent to this.\n"
    "Unauthorized use is prohibited and may be prosecuted."
)


@dataclass(frozen=True)
class Settings:
    data_dir: Path
    database_url: str
    node_name: str = field(default_factory=socket.gethostname)
    gateway_host: str = "0.0.0.0"
    gateway_port: int = 2222
    web_host: str = "127.0.0.1"
    web_port: int = 8080
    recordings_dir: Path = Path("recordings")
    log_format: str = "json"
    log_level: str = "info"
    upstream_connect_timeout: float = 10.0
    upstream_reuse: bool = True  # share one device connection among its session channels
    upstream_max_channels: int = 10  # channels per shared connection (sshd's MaxSessions)
    upstream_idle_seconds: float = 30.0  # a shared connection without channels closes after
    gateway_proxy_protocol: bool = False  # every connection must start with a PROXY header
    gateway_proxy_trusted: tuple[str, ...] = ()  # CIDRs of the load balancers that send it
    session_window_warnings: tuple[str, ...] = ("900", "300", "60")  # seconds before the end
    session_idle_timeout: int = 1800  # seconds without traffic; 0 turns it off
    session_max_length: int = 43200  # seconds; 0 turns it off (grants may set their own)
    recordings_backend: str = "local"  # "local" (recordings_dir) or "s3"
    recordings_retention_days: int = 0  # 0 keeps recordings forever
    s3_endpoint: str = ""  # empty: the AWS default for s3_region
    s3_bucket: str = ""
    s3_region: str = "us-east-1"
    s3_prefix: str = ""
    audit_checkpoint_every: int = 1000  # sign a checkpoint after this many events ...
    audit_checkpoint_seconds: float = 300.0  # ... or when the last one is this old
    web_public_url: str = ""  # how vendors reach the portal, for invite links and emails
    web_cookie_secure: bool = True  # Secure cookies; off only for plain-HTTP local demos
    web_session_minutes: int = 480  # a signed-in browser expires after this long
    web_idle_minutes: int = 30  # ... or after this long without a request
    web_login_attempts: int = 5  # failed logins per login name (and per address x4) ...
    web_login_window: int = 900  # ... within this many seconds, then refused until it passes
    gateway_public_host: str = "localhost"  # the host name vendors give ssh (connect panel)
    gateway_public_port: int = 2222
    workflow_ticket_pattern: str = r"^(CHG|INC)[0-9]{4,10}$"  # a full-match regex
    workflow_invite_hours: int = 72  # an invite link works this long, once
    notify_smtp_host: str = ""  # empty: no email
    notify_smtp_port: int = 25
    notify_smtp_starttls: bool = False
    notify_smtp_user: str = ""
    notify_smtp_password: str = ""
    notify_from: str = "sallyport@localhost"
    notify_email_to: tuple[str, ...] = ()  # staff addresses told of every workflow event
    notify_webhooks: tuple[str, ...] = ()  # URLs that get a JSON POST per event
    notify_webhook_secret: str = ""  # when set, each POST carries an HMAC-SHA256 signature
    browser_host: str = "127.0.0.1"  # the browser door (WebSocket at /door) of the gateway
    browser_port: int = 8022
    browser_public_url: str = ""  # empty: ws://{gateway_public_host}:{browser_port}/door
    observer_for_life_sustaining: bool = True  # life-sustaining devices need a staff observer
    # before authentication (broker.preauth), as OpenSSH's LoginGraceTime, MaxStartups,
    # PerSourceMaxStartups and PerSourcePenalties
    login_grace_seconds: int = 30  # time to finish key + code; enough to read a phone
    max_startups: int = 200  # unauthenticated connections in all ...
    per_source_max_startups: int = 10  # ... and per address (IPv6: per /64)
    # this many failed logins from one address within a minute (more than the account
    # lockout's 5, so a person is told of that first) refuse the address penalty_seconds,
    # doubling with each further penalty up to 10 minutes
    penalty_failures: int = 10
    penalty_seconds: int = 30
    banner: str = DEFAULT_BANNER  # system use notification (AC-8) before login, SSH and web
    banner_file: str = ""  # when set, the banner is this file's text

    def __post_init__(self) -> None:
        if self.upstream_max_channels < 1:
            raise ConfigError("config-invalid", "gateway.upstream_max_channels: at least 1")
        if self.upstream_idle_seconds < 0:
            raise ConfigError("config-invalid", "gateway.upstream_idle_seconds: not negative")
        for name in ("login_grace_seconds", "max_startups", "per_source_max_startups",
                     "penalty_failures", "penalty_seconds"):  # fmt: skip
            if getattr(self, name) < 1:
                raise ConfigError("config-invalid", f"gateway.{name}: at least 1")

    def banner_text(self) -> str:
        """The system use notification shown before login (the file's text when set)."""
        if self.banner_file:
            try:
                return Path(self.banner_file).read_text(encoding="utf-8").strip()
            except OSError as exc:
                raise ConfigError(
                    "config-invalid", f"gateway.banner_file: cannot read {self.banner_file}: {exc}"
                ) from None
        return self.banner.strip()

    def browser_door_url(self) -> str:
        """The WebSocket URL the portal gives browsers for the gateway's browser door."""
        return self.browser_public_url or (
            f"ws://{self.gateway_public_host}:{self.browser_port}/door"
        )

    def portal_origin(self) -> str:
        """The portal's origin: the only Origin the browser door accepts (no CSWSH)."""
        if self.web_public_url:
            scheme, _, rest = self.web_public_url.partition("://")
            return f"{scheme}://{rest.split('/', 1)[0]}".lower()
        return f"http://{self.web_host}:{self.web_port}"

    @property
    def keys_dir(self) -> Path:
        return self.data_dir / "keys"

    @property
    def vault_key_path(self) -> Path:
        return self.keys_dir / "vault.key"

    @property
    def audit_key_path(self) -> Path:
        return self.keys_dir / "audit-signing.pem"

    @property
    def host_key_path(self) -> Path:
        return self.keys_dir / "ssh_host_ed25519_key"

    @property
    def ca_key_path(self) -> Path:
        return self.keys_dir / "ssh_ca_ed25519_key"


# (TOML section, key) -> (Settings field, converter)
_FIELDS: dict[tuple[str, str], tuple[str, type]] = {
    ("", "data_dir"): ("data_dir", Path),
    ("", "database_url"): ("database_url", str),
    ("", "node_name"): ("node_name", str),
    ("gateway", "host"): ("gateway_host", str),
    ("gateway", "port"): ("gateway_port", int),
    ("gateway", "upstream_connect_timeout"): ("upstream_connect_timeout", float),
    ("gateway", "upstream_reuse"): ("upstream_reuse", bool),
    ("gateway", "upstream_max_channels"): ("upstream_max_channels", int),
    ("gateway", "upstream_idle_seconds"): ("upstream_idle_seconds", float),
    ("gateway", "proxy_protocol"): ("gateway_proxy_protocol", bool),
    ("gateway", "proxy_trusted"): ("gateway_proxy_trusted", tuple),  # "10.0.0.0/8,10.1.0.0/16"
    ("session", "window_warnings"): ("session_window_warnings", tuple),  # "900,300,60"
    ("session", "idle_timeout"): ("session_idle_timeout", int),
    ("session", "max_length"): ("session_max_length", int),
    ("web", "host"): ("web_host", str),
    ("web", "port"): ("web_port", int),
    ("recordings", "dir"): ("recordings_dir", Path),
    ("recordings", "backend"): ("recordings_backend", str),
    ("recordings", "retention_days"): ("recordings_retention_days", int),
    ("recordings", "s3_endpoint"): ("s3_endpoint", str),
    ("recordings", "s3_bucket"): ("s3_bucket", str),
    ("recordings", "s3_region"): ("s3_region", str),
    ("recordings", "s3_prefix"): ("s3_prefix", str),
    ("web", "public_url"): ("web_public_url", str),
    ("web", "cookie_secure"): ("web_cookie_secure", bool),
    ("web", "session_minutes"): ("web_session_minutes", int),
    ("web", "idle_minutes"): ("web_idle_minutes", int),
    ("web", "login_attempts"): ("web_login_attempts", int),
    ("web", "login_window"): ("web_login_window", int),
    ("gateway", "public_host"): ("gateway_public_host", str),
    ("gateway", "public_port"): ("gateway_public_port", int),
    ("workflow", "ticket_pattern"): ("workflow_ticket_pattern", str),
    ("workflow", "invite_hours"): ("workflow_invite_hours", int),
    ("notify", "smtp_host"): ("notify_smtp_host", str),
    ("notify", "smtp_port"): ("notify_smtp_port", int),
    ("notify", "smtp_starttls"): ("notify_smtp_starttls", bool),
    ("notify", "smtp_user"): ("notify_smtp_user", str),
    ("notify", "smtp_password"): ("notify_smtp_password", str),
    ("notify", "from"): ("notify_from", str),
    ("notify", "email_to"): ("notify_email_to", tuple),
    ("notify", "webhooks"): ("notify_webhooks", tuple),
    ("notify", "webhook_secret"): ("notify_webhook_secret", str),
    ("gateway", "browser_host"): ("browser_host", str),
    ("gateway", "browser_port"): ("browser_port", int),
    ("gateway", "browser_public_url"): ("browser_public_url", str),
    ("session", "observer_for_life_sustaining"): ("observer_for_life_sustaining", bool),
    ("gateway", "login_grace_seconds"): ("login_grace_seconds", int),
    ("gateway", "max_startups"): ("max_startups", int),
    ("gateway", "per_source_max_startups"): ("per_source_max_startups", int),
    ("gateway", "penalty_failures"): ("penalty_failures", int),
    ("gateway", "penalty_seconds"): ("penalty_seconds", int),
    ("gateway", "banner"): ("banner", str),
    ("gateway", "banner_file"): ("banner_file", str),
    ("audit", "checkpoint_every"): ("audit_checkpoint_every", int),
    ("audit", "checkpoint_seconds"): ("audit_checkpoint_seconds", float),
    ("log", "format"): ("log_format", str),
    ("log", "level"): ("log_level", str),
}


def default_database_url(data_dir: Path) -> str:
    return f"sqlite+aiosqlite:///{data_dir / 'sallyport.db'}"


def load_settings(path: Path | None, env: dict[str, str] | None = None) -> Settings:
    """Read ``path`` (if given), apply environment overrides, resolve relative paths."""
    env = dict(os.environ) if env is None else env
    values: dict[str, Any] = {}
    base = Path.cwd()
    if path is not None:
        try:
            raw = tomllib.loads(path.read_text())
        except FileNotFoundError:
            raise ConfigError("config-missing", f"config file {path} does not exist") from None
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError("config-invalid", f"{path}: {exc}") from None
        base = path.resolve().parent
        values.update(_from_toml(raw, path))
    for (section, key), (name, conv) in _FIELDS.items():
        var = ENV_PREFIX + (f"{section}_{key}" if section else key).upper()
        if var in env:
            values[name] = _convert(conv, env[var], var)
    if "data_dir" not in values:
        raise ConfigError(
            "config-invalid", "data_dir is not set (config file or SALLYPORT_DATA_DIR)"
        )
    data_dir = _resolve(base, values.pop("data_dir"))
    values.setdefault("database_url", default_database_url(data_dir))
    settings = Settings(data_dir=data_dir, **values)
    return replace(settings, recordings_dir=_resolve(data_dir, settings.recordings_dir))


def render_settings(settings: Settings) -> str:
    """The TOML text for ``settings`` (what ``sallyport demo`` writes into its data dir)."""
    sections: dict[str, list[str]] = {}
    for (section, key), (name, _conv) in _FIELDS.items():
        value = getattr(settings, name)
        text = str(value).lower() if isinstance(value, bool) else value
        text = ",".join(value) if isinstance(value, tuple) else text
        literal = str(text) if isinstance(value, int | float) else _toml_string(str(text))
        sections.setdefault(section, []).append(f"{key} = {literal}")
    out = sections.pop("", [])
    for section, lines in sections.items():
        out += ["", f"[{section}]", *lines]
    return "\n".join(out) + "\n"


def _from_toml(raw: dict[str, Any], path: Path) -> dict[str, Any]:
    values: dict[str, Any] = {}
    for key, value in raw.items():
        if isinstance(value, dict):
            for sub, subval in value.items():
                values.update(_one(path, key, sub, subval))
        else:
            values.update(_one(path, "", key, value))
    return values


def _one(path: Path, section: str, key: str, value: Any) -> dict[str, Any]:
    spec = _FIELDS.get((section, key))
    where = f"{section}.{key}" if section else key
    if spec is None:
        raise ConfigError("config-invalid", f"{path}: unknown setting {where}")
    name, conv = spec
    return {name: _convert(conv, value, where)}


def _convert(conv: type, value: Any, where: str) -> Any:
    """Convert strictly: a TOML float or boolean is not a port number."""
    if conv is bool:
        return _to_bool(value, where)
    if conv is tuple:
        return _to_tuple(value, where)
    wrong = isinstance(value, bool) or (conv is int and isinstance(value, float))
    wrong = wrong or (conv in (str, Path) and not isinstance(value, str))
    try:
        if wrong:
            raise TypeError
        return conv(value)
    except (TypeError, ValueError):
        raise ConfigError("config-invalid", f"{where}: cannot read {value!r}") from None


def _to_bool(value: Any, where: str) -> bool:
    """A TOML boolean, or in the environment true/false, 1/0, yes/no, on/off."""
    if isinstance(value, bool):
        return value
    word = value.strip().lower() if isinstance(value, str) else None
    if word in ("true", "1", "yes", "on"):
        return True
    if word in ("false", "0", "no", "off"):
        return False
    raise ConfigError("config-invalid", f"{where}: cannot read {value!r} as true or false")


def _to_tuple(value: Any, where: str) -> tuple[str, ...]:
    """A comma-separated string (or a TOML array of strings); blanks are dropped."""
    items = value.split(",") if isinstance(value, str) else value
    if not isinstance(items, list) or not all(isinstance(item, str) for item in items):
        raise ConfigError("config-invalid", f"{where}: cannot read {value!r} as a list")
    return tuple(item.strip() for item in items if item.strip())


def _resolve(base: Path, value: Path) -> Path:
    return value if value.is_absolute() else (base / value).resolve()


def _toml_string(text: str) -> str:
    """A TOML basic string: backslash, quote and every control character escaped."""
    out = []
    for ch in text:
        if ch in ('"', "\\"):
            out.append("\\" + ch)
        elif ord(ch) < 0x20 or ord(ch) == 0x7F:
            out.append(f"\\u{ord(ch):04x}")
        else:
            out.append(ch)
    return '"' + "".join(out) + '"'
