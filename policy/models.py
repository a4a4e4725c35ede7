"""The inventory, the people and the access records, as SQLAlchemy 2 models.

Times are stored as UTC and always come back timezone-aware (``UTCDateTime``), so the
same code runs on SQLite (which keeps no zone) and PostgreSQL.
"""

from __future__ import annotations

import enum
import uuid
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Column,
    DateTime,
    Enum,
    ForeignKey,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Table,
    Text,
    UniqueConstraint,
    false,
)
from sqlalchemy.engine import Dialect
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship
from sqlalchemy.types import TypeDecorator

NAMING = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class UTCDateTime(TypeDecorator[datetime]):
    """A datetime stored as naive UTC and returned timezone-aware."""

    impl = DateTime
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given; sallyport stores aware UTC times only")
        return value.astimezone(UTC).replace(tzinfo=None)

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC)


def utcnow() -> datetime:
    return datetime.now(UTC)


def new_id() -> str:
    return uuid.uuid4().hex


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING)


class Criticality(enum.StrEnum):
    LOW = "low"
    MEDIUM = "medium"
    HIGH = "high"
    LIFE_SUSTAINING = "life-sustaining"


class CredentialKind(enum.StrEnum):
    PASSWORD = "password"  # noqa: S105 - a kind name, not a secret
    KEY = "key"


class RequestStatus(enum.StrEnum):
    PENDING = "pending"
    APPROVED = "approved"
    DENIED = "denied"
    CANCELLED = "cancelled"


class RecordingStatus(enum.StrEnum):
    RECORDING = "recording"
    FINAL = "final"
    INCOMPLETE = "incomplete"
    EXPIRED = "expired"  # removed by retention; the audit chain keeps its key and sha256


def _enum(cls: type[enum.StrEnum], name: str) -> Enum:
    return Enum(
        cls,
        name=name,
        native_enum=False,
        validate_strings=True,
        values_callable=lambda e: [m.value for m in e],
        length=32,
    )


class Segment(Base):
    __tablename__ = "segment"

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(100), unique=True)
    description: Mapped[str] = mapped_column(Text, default="")
    networks: Mapped[list[str]] = mapped_column(JSON, default=list)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)

    devices: Mapped[list[Device]] = relationship(back_populates="segment")


class Device(Base):
    __tablename__ = "device"

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(100), unique=True)
    asset_tag: Mapped[str] = mapped_column(String(100), default="")
    manufacturer: Mapped[str] = mapped_column(String(200), default="")
    model: Mapped[str] = mapped_column(String(200), default="")
    firmware: Mapped[str] = mapped_column(String(100), default="")
    location: Mapped[str] = mapped_column(String(200), default="")
    criticality: Mapped[Criticality] = mapped_column(
        _enum(Criticality, "criticality"), default=Criticality.MEDIUM
    )
    segment_id: Mapped[int] = mapped_column(ForeignKey("segment.id"))
    address: Mapped[str] = mapped_column(String(255))
    ssh_host_key: Mapped[str | None] = mapped_column(Text, nullable=True)
    credential_username: Mapped[str | None] = mapped_column(String(100), nullable=True)
    credential_kind: Mapped[CredentialKind | None] = mapped_column(
        _enum(CredentialKind, "credential_kind"), nullable=True
    )
    credential_secret: Mapped[bytes | None] = mapped_column(LargeBinary, nullable=True)
    # weekly windows in which vendor work is allowed (policy.windows.Weekly.to_json);
    # empty means no restriction
    maintenance_windows: Mapped[list[dict[str, Any]]] = mapped_column(JSON, default=list)
    # sessions need a staff observer before input reaches the device (policy.moderation):
    # None = by criticality (life-sustaining devices, when the setting says so)
    observer_required: Mapped[bool | None] = mapped_column(nullable=True)
    updated_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)

    segment: Mapped[Segment] = relationship(back_populates="devices")
    services: Mapped[list[DeviceService]] = relationship(
        back_populates="device", cascade="all, delete-orphan", order_by="DeviceService.port"
    )


class DeviceService(Base):
    __tablename__ = "device_service"
    __table_args__ = (UniqueConstraint("device_id", "name"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    device_id: Mapped[int] = mapped_column(ForeignKey("device.id", ondelete="CASCADE"))
    name: Mapped[str] = mapped_column(String(50))
    port: Mapped[int] = mapped_column(Integer)
    protocol: Mapped[str] = mapped_column(String(10), default="tcp")

    device: Mapped[Device] = relationship(back_populates="services")


class Vendor(Base):
    __tablename__ = "vendor"

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(200), unique=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)

    users: Mapped[list[VendorUser]] = relationship(back_populates="vendor")
    # the devices this organization services: its users may request only these
    devices: Mapped[list[Device]] = relationship(secondary="vendor_device")


class VendorUser(Base):
    __tablename__ = "vendor_user"

    id: Mapped[int] = mapped_column(primary_key=True)
    vendor_id: Mapped[int] = mapped_column(ForeignKey("vendor.id"))
    login: Mapped[str] = mapped_column(String(64), unique=True)
    display_name: Mapped[str] = mapped_column(String(200), default="")
    email: Mapped[str] = mapped_column(String(254), default="")
    password_hash: Mapped[str | None] = mapped_column(String(255), nullable=True)
    totp_secret: Mapped[bytes | None] = mapped_column(LargeBinary, nullable=True)
    totp_last_step: Mapped[int | None] = mapped_column(Integer, nullable=True)
    locked_until: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    disabled: Mapped[bool] = mapped_column(default=False)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)

    vendor: Mapped[Vendor] = relationship(back_populates="users")
    keys: Mapped[list[VendorKey]] = relationship(
        back_populates="user", cascade="all, delete-orphan"
    )


class VendorKey(Base):
    __tablename__ = "vendor_key"

    id: Mapped[int] = mapped_column(primary_key=True)
    vendor_user_id: Mapped[int] = mapped_column(
        ForeignKey("vendor_user.id", ondelete="CASCADE"), index=True
    )
    public_key: Mapped[str] = mapped_column(Text)
    fingerprint: Mapped[str] = mapped_column(String(100), unique=True)
    comment: Mapped[str] = mapped_column(String(200), default="")
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)

    user: Mapped[VendorUser] = relationship(back_populates="keys")


class MfaFailure(Base):
    """One failed second-factor attempt; the lockout rule counts recent rows."""

    __tablename__ = "mfa_failure"

    id: Mapped[int] = mapped_column(primary_key=True)
    vendor_user_id: Mapped[int] = mapped_column(
        ForeignKey("vendor_user.id", ondelete="CASCADE"), index=True
    )
    at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class StaffUser(Base):
    __tablename__ = "staff_user"

    id: Mapped[int] = mapped_column(primary_key=True)
    login: Mapped[str] = mapped_column(String(64), unique=True)
    display_name: Mapped[str] = mapped_column(String(200), default="")
    email: Mapped[str] = mapped_column(String(254), default="")
    password_hash: Mapped[str | None] = mapped_column(String(255), nullable=True)
    totp_secret: Mapped[bytes | None] = mapped_column(LargeBinary, nullable=True)
    totp_last_step: Mapped[int | None] = mapped_column(Integer, nullable=True)
    locked_until: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    roles: Mapped[list[str]] = mapped_column(JSON, default=list)
    disabled: Mapped[bool] = mapped_column(default=False)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


vendor_device = Table(
    "vendor_device",
    Base.metadata,
    Column("vendor_id", ForeignKey("vendor.id", ondelete="CASCADE"), primary_key=True),
    Column("device_id", ForeignKey("device.id", ondelete="CASCADE"), primary_key=True),
)

request_device = Table(
    "access_request_device",
    Base.metadata,
    Column("request_id", ForeignKey("access_request.id", ondelete="CASCADE"), primary_key=True),
    Column("device_id", ForeignKey("device.id"), primary_key=True),
)

grant_device = Table(
    "grant_device",
    Base.metadata,
    Column("grant_id", ForeignKey("grant.id", ondelete="CASCADE"), primary_key=True),
    Column("device_id", ForeignKey("device.id"), primary_key=True),
)


class AccessRequest(Base):
    __tablename__ = "access_request"

    id: Mapped[int] = mapped_column(primary_key=True)
    vendor_user_id: Mapped[int] = mapped_column(ForeignKey("vendor_user.id"))
    ticket_ref: Mapped[str] = mapped_column(String(64), index=True)
    reason: Mapped[str] = mapped_column(Text, default="")
    services: Mapped[list[str]] = mapped_column(JSON, default=list)
    window_start: Mapped[datetime] = mapped_column(UTCDateTime)
    window_end: Mapped[datetime] = mapped_column(UTCDateTime)
    # a recurring weekly window inside [window_start, window_end) (policy.windows.Weekly)
    recurrence: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)
    status: Mapped[RequestStatus] = mapped_column(
        _enum(RequestStatus, "request_status"), default=RequestStatus.PENDING
    )
    # who filed it: "vendor:LOGIN" or "staff:LOGIN" / "token:NAME" for integrations
    filed_by: Mapped[str] = mapped_column(String(100), default="")
    # bumped by every edit; approvals bind the content of one revision (Approval.binding)
    revision: Mapped[int] = mapped_column(Integer, default=1)
    # why a window outside the devices' maintenance windows was allowed anyway
    override_reason: Mapped[str | None] = mapped_column(Text, nullable=True)
    decision_reason: Mapped[str] = mapped_column(Text, default="")
    updated_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)

    devices: Mapped[list[Device]] = relationship(secondary=request_device)
    approvals: Mapped[list[Approval]] = relationship(
        back_populates="request", cascade="all, delete-orphan"
    )


class Approval(Base):
    __tablename__ = "approval"

    id: Mapped[int] = mapped_column(primary_key=True)
    request_id: Mapped[int] = mapped_column(ForeignKey("access_request.id", ondelete="CASCADE"))
    approver: Mapped[str] = mapped_column(String(100))
    staff_user_id: Mapped[int | None] = mapped_column(ForeignKey("staff_user.id"), nullable=True)
    role: Mapped[str] = mapped_column(String(32))
    decision: Mapped[str] = mapped_column(String(16))
    # SHA-256 of the request content approved (ticket, devices, services, window, recurrence)
    binding: Mapped[str] = mapped_column(String(64), default="")
    comment: Mapped[str] = mapped_column(Text, default="")
    decided_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)

    request: Mapped[AccessRequest] = relationship(back_populates="approvals")


class Grant(Base):
    """Approved access: one vendor user, one ticket, named devices and services, a window."""

    __tablename__ = "grant"

    id: Mapped[int] = mapped_column(primary_key=True)
    request_id: Mapped[int | None] = mapped_column(ForeignKey("access_request.id"), nullable=True)
    vendor_user_id: Mapped[int] = mapped_column(ForeignKey("vendor_user.id"), index=True)
    ticket_ref: Mapped[str] = mapped_column(String(64), index=True)
    services: Mapped[list[str]] = mapped_column(JSON, default=list)
    window_start: Mapped[datetime] = mapped_column(UTCDateTime)
    window_end: Mapped[datetime] = mapped_column(UTCDateTime)
    # sessions may start only inside an occurrence of this weekly window (policy.windows)
    recurrence: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)
    approved_by: Mapped[str] = mapped_column(String(200), default="")
    transfers: Mapped[str] = mapped_column(String(16), default="read-write")
    # per-grant limits in seconds; None means the gateway's defaults
    idle_timeout: Mapped[int | None] = mapped_column(Integer, nullable=True)
    max_session: Mapped[int | None] = mapped_column(Integer, nullable=True)
    # the approvers asked for a staff observer (adds to the device's rule, never removes it)
    observer_required: Mapped[bool] = mapped_column(default=False, server_default=false())
    revoked_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    revoked_by: Mapped[str | None] = mapped_column(String(100), nullable=True)
    revoke_reason: Mapped[str | None] = mapped_column(Text, nullable=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)

    devices: Mapped[list[Device]] = relationship(secondary=grant_device)
    user: Mapped[VendorUser] = relationship()


class Session(Base):
    """One vendor connection to one device through the gateway."""

    __tablename__ = "session"

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    vendor_user_id: Mapped[int] = mapped_column(ForeignKey("vendor_user.id"), index=True)
    device_id: Mapped[int] = mapped_column(ForeignKey("device.id"), index=True)
    grant_id: Mapped[int] = mapped_column(ForeignKey("grant.id"), index=True)
    ticket_ref: Mapped[str] = mapped_column(String(64))
    kind: Mapped[str] = mapped_column(String(16))
    command: Mapped[str | None] = mapped_column(Text, nullable=True)
    client_address: Mapped[str] = mapped_column(String(100), default="")
    gateway_node: Mapped[str] = mapped_column(String(100), default="")
    started_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    ended_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    end_reason: Mapped[str | None] = mapped_column(String(64), nullable=True)
    exit_status: Mapped[int | None] = mapped_column(Integer, nullable=True)
    bytes_from_vendor: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    bytes_from_device: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    # a kill asked for from the web or CLI; the gateway holding the session acts on it
    kill_requested_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    kill_requested_by: Mapped[str | None] = mapped_column(String(100), nullable=True)
    # the device record as it was when the session started (policy.snapshot.device_snapshot)
    device_snapshot: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)
    # the session was opened moderated: input waits for a staff observer (shown on /live)
    observer_required: Mapped[bool] = mapped_column(default=False, server_default=false())

    recordings: Mapped[list[Recording]] = relationship(back_populates="session")


class Recording(Base):
    __tablename__ = "recording"

    id: Mapped[int] = mapped_column(primary_key=True)
    session_id: Mapped[str] = mapped_column(ForeignKey("session.id"), index=True)
    format: Mapped[str] = mapped_column(String(32))
    storage_key: Mapped[str] = mapped_column(String(500), unique=True)
    status: Mapped[RecordingStatus] = mapped_column(
        _enum(RecordingStatus, "recording_status"), default=RecordingStatus.RECORDING
    )
    sha256: Mapped[str | None] = mapped_column(String(64), nullable=True)
    size: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    started_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)

    session: Mapped[Session] = relationship(back_populates="recordings")


class AuditEvent(Base):
    """An event in the audit log (the hash chain over these rows is the evidence issue's)."""

    __tablename__ = "audit_event"

    id: Mapped[int] = mapped_column(primary_key=True)
    at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, index=True)
    tag: Mapped[str] = mapped_column(String(100), index=True)
    actor: Mapped[str] = mapped_column(String(100), default="")
    device: Mapped[str | None] = mapped_column(String(100), nullable=True)
    session_id: Mapped[str | None] = mapped_column(String(32), nullable=True, index=True)
    request_id: Mapped[int | None] = mapped_column(Integer, nullable=True)
    detail: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    # The hash chain (recorder/chain.py): ``id`` is the position, assigned by the audit log
    # under the chain-head lock, so ids are consecutive from 1.
    prev_hash: Mapped[str] = mapped_column(String(64))
    hash: Mapped[str] = mapped_column(String(64))


class AuditChainHead(Base):
    """The one row (id 1) that serializes appends to the audit chain and records its end.

    Appenders lock it (SELECT ... FOR UPDATE on PostgreSQL; the database write lock on
    SQLite) in the same transaction as the event they insert.
    """

    __tablename__ = "audit_chain_head"

    id: Mapped[int] = mapped_column(primary_key=True)
    last_event_id: Mapped[int] = mapped_column(Integer, default=0)
    last_hash: Mapped[str] = mapped_column(String(64))
    checkpoints: Mapped[int] = mapped_column(Integer, default=0)
    checkpoint_event_id: Mapped[int] = mapped_column(Integer, default=0)
    checkpoint_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class AuditCheckpoint(Base):
    """An Ed25519 signature over the chain hash at one event (recorder/chain.py)."""

    __tablename__ = "audit_checkpoint"

    id: Mapped[int] = mapped_column(primary_key=True)
    event_id: Mapped[int] = mapped_column(Integer, index=True)
    hash: Mapped[str] = mapped_column(String(64))
    at: Mapped[datetime] = mapped_column(UTCDateTime)
    key_id: Mapped[str] = mapped_column(String(64))
    signature: Mapped[str] = mapped_column(String(128))


class Invite(Base):
    """A one-time link to register: a vendor user of one organization, or a staff user."""

    __tablename__ = "invite"

    id: Mapped[int] = mapped_column(primary_key=True)
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)  # SHA-256 of the token
    kind: Mapped[str] = mapped_column(String(16))  # "vendor" or "staff"
    vendor_id: Mapped[int | None] = mapped_column(ForeignKey("vendor.id"), nullable=True)
    roles: Mapped[list[str]] = mapped_column(JSON, default=list)  # staff invites only
    email: Mapped[str] = mapped_column(String(254), default="")
    created_by: Mapped[str] = mapped_column(String(100))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    expires_at: Mapped[datetime] = mapped_column(UTCDateTime)
    used_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    used_by: Mapped[str | None] = mapped_column(String(100), nullable=True)

    vendor: Mapped[Vendor | None] = relationship()


class ApiToken(Base):
    """A bearer token for integrations; it acts as its staff or vendor user."""

    __tablename__ = "api_token"

    id: Mapped[int] = mapped_column(primary_key=True)
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)  # SHA-256 of the token
    name: Mapped[str] = mapped_column(String(100))
    staff_user_id: Mapped[int | None] = mapped_column(
        ForeignKey("staff_user.id", ondelete="CASCADE"), nullable=True
    )
    vendor_user_id: Mapped[int | None] = mapped_column(
        ForeignKey("vendor_user.id", ondelete="CASCADE"), nullable=True
    )
    created_by: Mapped[str] = mapped_column(String(100), default="")
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    last_used_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    revoked_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)


class WebSession(Base):
    """A signed-in browser: the cookie holds a random id, the row holds its SHA-256."""

    __tablename__ = "web_session"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    data: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    expires_at: Mapped[datetime] = mapped_column(UTCDateTime, index=True)


class LoginFailure(Base):
    """A failed web login, by login name and client address; rate limits count these."""

    __tablename__ = "login_failure"

    id: Mapped[int] = mapped_column(primary_key=True)
    login: Mapped[str] = mapped_column(String(64), index=True)
    address: Mapped[str] = mapped_column(String(100), index=True)
    at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class PolicyGeneration(Base):
    """One row whose counter database triggers advance, in the same transaction, with every
    write to what a gateway decision reads (vendor users' login fields and keys, devices,
    their services and segments, grants and their devices; migration 0006). A gateway's
    cache (``policy.cache``) is valid only while the counter has not moved."""

    __tablename__ = "policy_generation"

    id: Mapped[int] = mapped_column(primary_key=True)
    value: Mapped[int] = mapped_column(BigInteger, default=0)


class ConnectTicket(Base):
    """A one-time ticket the portal gives a browser to open (or watch) a session at the
    gateway's browser door (``policy.tickets``); only its SHA-256 is stored."""

    __tablename__ = "connect_ticket"

    id: Mapped[int] = mapped_column(primary_key=True)
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    purpose: Mapped[str] = mapped_column(String(16))  # "connect" or "watch"
    vendor_user_id: Mapped[int | None] = mapped_column(
        ForeignKey("vendor_user.id", ondelete="CASCADE"), nullable=True
    )
    staff_user_id: Mapped[int | None] = mapped_column(
        ForeignKey("staff_user.id", ondelete="CASCADE"), nullable=True
    )
    actor: Mapped[str] = mapped_column(String(100))  # the login of who it is for
    grant_id: Mapped[int | None] = mapped_column(ForeignKey("grant.id"), nullable=True)
    device_id: Mapped[int | None] = mapped_column(ForeignKey("device.id"), nullable=True)
    service: Mapped[str | None] = mapped_column(String(50), nullable=True)
    session_id: Mapped[str | None] = mapped_column(
        String(32), ForeignKey("session.id", ondelete="CASCADE"), nullable=True
    )
    web_session_id: Mapped[str] = mapped_column(String(64))  # the portal session that asked
    step_up_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    expires_at: Mapped[datetime] = mapped_column(UTCDateTime, index=True)
    consumed_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    consumed_node: Mapped[str | None] = mapped_column(String(100), nullable=True)
