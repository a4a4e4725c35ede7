"""Recurring weekly grants through the gateway, with the real OpenSSH client and sshd.

A recurring grant opens only inside an occurrence of its weekly window: outside one the
vendor is refused with the next occurrence named, inside one the session is warned and
closed at the occurrence's end exactly as at a window end, while the grant goes on.
"""

from __future__ import annotations

import asyncio
import socket
from datetime import UTC, datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from broker.gateway import Gateway
from broker.supervisor import Supervised
from policy import admin, store
from policy.errors import InvalidInput
from policy.models import AuditEvent, Device, Grant, Session
from policy.supervise import Limits
from policy.windows import Weekly
from tests.broker.test_channels import denial_reasons, jump_config, run
from tests.broker.test_gateway import only_session, settled
from tests.broker.test_segments import WEB, inventory, lab  # noqa: F401 - fixtures
from tests.conftest import Clock, VendorLogin
from tests.support.openssh import client_env, make_askpass, ssh_argv

pytestmark = pytest.mark.integration

Sessions = async_sessionmaker[AsyncSession]
BERLIN = ZoneInfo("Europe/Berlin")


async def recurring_grant(
    db: Sessions,
    weekly: Weekly,
    start: datetime,
    end: datetime,
    devices: tuple[str, ...] = ("pump-12",),
    services: tuple[str, ...] = ("ssh",),
) -> Grant:
    async with db() as s:
        return await admin.add_grant(
            s,
            login="vendor1",
            devices=devices,
            services=services,
            ticket="CHG0005678",
            start=start,
            end=end,
            approved_by="test",
            recurrence=weekly,
        )


def weekly_from(begin: datetime, length: timedelta) -> Weekly:
    """A weekly window (Berlin time) whose occurrence starts at ``begin`` (a whole minute)."""
    local_begin = begin.astimezone(BERLIN)
    local_end = (begin + length).astimezone(BERLIN)
    weekly = Weekly(
        frozenset({local_begin.weekday()}), local_begin.time(), local_end.time(), "Europe/Berlin"
    )
    # the test means exactly this occurrence; say so if a DST change gets in the way
    assert weekly.occurrence_at(begin) == (begin, begin + length), weekly
    return weekly


async def supervised(gateway: Gateway) -> Supervised:
    """The one live session, once the supervisor watches it."""
    for _ in range(300):
        if gateway.ctx.supervisor.live:
            [session] = gateway.ctx.supervisor.live
            return session
        await asyncio.sleep(0.05)
    raise AssertionError("no session came under supervision")


def minute(at: datetime) -> datetime:
    return at.replace(second=0, microsecond=0)


async def test_outside_an_occurrence_the_vendor_is_refused_with_the_next_one(
    vendor: VendorLogin, pump: Device, db: Sessions, clock: Clock
) -> None:
    now = clock()
    begin = minute(now + timedelta(hours=3))
    weekly = weekly_from(begin, timedelta(hours=1))
    await recurring_grant(db, weekly, now - timedelta(hours=1), now + timedelta(days=2))

    result = await vendor.ssh("pump-12", "echo should-not-run")

    assert result.returncode != 0 and b"should-not-run" not in result.stdout
    assert "your recurring access window for 'pump-12' is not open now" in result.stderr
    assert f"next occurrence starts {begin:%Y-%m-%d %H:%M} UTC" in result.stderr
    assert weekly.describe() in result.stderr
    await settled(db)
    async with db() as s:
        assert (await s.scalars(select(Session))).all() == []
        denials = list(
            await s.scalars(select(AuditEvent).where(AuditEvent.tag == "broker:target:deny"))
        )
    assert [d.detail["reason"] for d in denials] == ["outside-recurring-window"]

    listing = await vendor.ssh(None)
    text = listing.stdout.decode()
    assert "you have no live grants right now" in text
    assert "recurring grants between occurrences" in text
    row = next(line for line in text.splitlines() if line.startswith("pump-12"))
    assert "CHG0005678" in row and f"{begin:%Y-%m-%d %H:%M}" in row
    assert weekly.describe() in row


async def test_proxyjump_outside_an_occurrence_is_refused_with_the_next_one(
    vendor: VendorLogin, pump: Device, db: Sessions, gateway: Gateway, tmp_path: Path
) -> None:
    now = datetime.now(UTC)
    begin = minute(now + timedelta(hours=5))
    weekly = weekly_from(begin, timedelta(hours=1))
    await recurring_grant(db, weekly, now - timedelta(hours=1), now + timedelta(days=2))
    config = jump_config(tmp_path, vendor, gateway)
    askpass = make_askpass(tmp_path, [vendor.code()])
    result = await run(
        ["ssh", "-F", str(config), "-J", f"vendor1@127.0.0.1:{gateway.port}",
         "admin@pump-12", "echo should-not-run"],
        client_env(askpass.env),
    )  # fmt: skip
    assert result.returncode != 0 and b"should-not-run" not in result.stdout
    assert f"next occurrence starts {begin:%Y-%m-%d %H:%M} UTC" in result.stderr
    [reason] = await denial_reasons(db)  # the audit event says why, as the vendor read it
    assert "next occurrence starts" in reason and weekly.describe() in reason


async def test_inside_an_occurrence_the_session_closes_at_its_end(
    vendor: VendorLogin, pump: Device, db: Sessions, gateway: Gateway, clock: Clock
) -> None:
    gateway.ctx.supervisor.limits = Limits(warnings=(3,), idle_timeout=None, max_session=None)
    # Occurrences are whole minutes: move the clock so that the session starts 6 s before
    # a minute boundary (each login's vendor.code() moves it 30 s on), and let that minute
    # end the occurrence.
    ahead = clock() + timedelta(seconds=60)
    end = minute(ahead + timedelta(seconds=70))
    clock.offset += end - timedelta(seconds=6) - ahead
    now = clock()
    weekly = weekly_from(end - timedelta(minutes=10), timedelta(minutes=10))
    g = await recurring_grant(db, weekly, now - timedelta(hours=1), now + timedelta(days=8))

    listing = await vendor.ssh(None)
    row = next(line for line in listing.stdout.decode().splitlines() if line.startswith("pump-12"))
    assert f"{end:%Y-%m-%d %H:%M}" in row and weekly.describe() in row  # ends with the occurrence

    ssh = asyncio.ensure_future(vendor.ssh("pump-12", "echo started; sleep 60"))
    live = await supervised(gateway)
    assert live.window_end == end  # the occurrence's end, not the grant's
    result = await asyncio.wait_for(ssh, 30)

    assert result.stdout == b"started\n"
    assert "your access window ends in" in result.stderr
    assert result.stderr.index("ends in") < result.stderr.index("has ended")
    session, recording = await only_session(db)
    assert session.end_reason == "window-ended" and recording.status == "final"
    # the grant itself goes on: the next attempt is refused until next week's occurrence
    assert clock() < g.window_end
    again = await vendor.ssh("pump-12", "echo should-not-run")
    assert b"should-not-run" not in again.stdout
    next_week = end - timedelta(minutes=10) + timedelta(days=7)
    assert f"next occurrence starts {next_week:%Y-%m-%d %H:%M} UTC" in again.stderr


async def test_occurrence_clipped_by_the_grant_window_ends_with_the_grant(
    vendor: VendorLogin, pump: Device, db: Sessions, gateway: Gateway, clock: Clock
) -> None:
    gateway.ctx.supervisor.limits = Limits(warnings=(), idle_timeout=None, max_session=None)
    code = vendor.code()
    now = clock()
    weekly = weekly_from(minute(now) - timedelta(minutes=30), timedelta(hours=2))
    g = await recurring_grant(db, weekly, now - timedelta(hours=1), now + timedelta(seconds=4))
    ssh = asyncio.ensure_future(vendor.ssh("pump-12", "sleep 60", answers=[code]))
    live = await supervised(gateway)
    assert live.window_end == g.window_end.astimezone(UTC)
    result = await asyncio.wait_for(ssh, 30)
    assert "your access window has ended" in result.stderr
    session, _ = await only_session(db)
    assert session.end_reason == "window-ended"


@pytest.mark.usefixtures("inventory")  # segments with pump-a's web console in a netns
async def test_a_port_forward_ends_with_the_occurrence(
    vendor: VendorLogin,
    db: Sessions,
    gateway: Gateway,
    clock: Clock,
    tmp_path: Path,
) -> None:
    """``ssh -N -L`` to a device's web console: the forwarded connection closes at the
    occurrence's end like a shell does."""
    gateway.ctx.supervisor.limits = Limits(warnings=(), idle_timeout=None, max_session=None)
    ahead = clock() + timedelta(seconds=30)
    end = minute(ahead + timedelta(seconds=70))
    clock.offset += end - timedelta(seconds=6) - ahead
    now = clock()
    weekly = weekly_from(end - timedelta(minutes=10), timedelta(minutes=10))
    await recurring_grant(
        db, weekly, now - timedelta(hours=1), now + timedelta(days=8), ("pump-a",), ("https",)
    )
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    askpass = make_askpass(tmp_path, [vendor.code()])
    argv = ssh_argv(
        host="127.0.0.1", port=gateway.port, user="vendor1", identity=vendor.identity,
        command=None, extra_args=["-N", "-o", "ExitOnForwardFailure=yes",
                                  "-L", f"127.0.0.1:{port}:pump-a:{WEB}"],
    )  # fmt: skip
    proc = await asyncio.create_subprocess_exec(
        *argv, env=client_env(askpass.env), stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL,
        start_new_session=True,
    )  # fmt: skip
    try:
        for _ in range(200):
            try:
                reader, writer = await asyncio.open_connection("127.0.0.1", port)
                break
            except OSError:
                await asyncio.sleep(0.05)
        else:
            raise AssertionError("the -L listener never came up")
        live = await supervised(gateway)
        assert live.window_end == end  # the occurrence's end, not the grant's
        assert await asyncio.wait_for(reader.read(), 20) == b""  # closed by the gateway
        writer.close()
        await writer.wait_closed()
    finally:
        proc.terminate()
        await proc.wait()
    await settled(db)
    async with db() as s:
        session = (await s.scalars(select(Session))).one()
    assert session.kind == "forward" and session.end_reason == "window-ended"


async def test_add_grant_stores_the_window_and_refuses_one_without_occurrences(
    vendor: VendorLogin, pump: Device, db: Sessions
) -> None:
    mornings = Weekly.from_spec("mon-fri,08:00-10:00,Europe/Berlin")
    monday = datetime(2026, 11, 23, tzinfo=UTC)
    g = await recurring_grant(db, mornings, monday, monday + timedelta(days=14))
    async with db() as s:
        [view] = await store.grants_for(s, g.vendor_user_id)
        assert (await s.get(Grant, g.id)).recurrence == mornings.to_json()  # type: ignore[union-attr]
    assert view.recurrence == mornings
    assert view.window_at(datetime(2026, 11, 24, 8, tzinfo=UTC)) == (
        datetime(2026, 11, 24, 7, tzinfo=UTC),
        datetime(2026, 11, 24, 9, tzinfo=UTC),
    )
    weekend = monday + timedelta(days=5)  # Saturday and Sunday hold no weekday morning
    with pytest.raises(InvalidInput) as err:
        await recurring_grant(db, mornings, weekend, weekend + timedelta(days=2))
    assert err.value.code == "recurrence-empty" and mornings.describe() in err.value.message
    with pytest.raises(InvalidInput) as err:
        await recurring_grant(db, mornings, monday, monday + timedelta(days=5 * 365))
    assert err.value.code == "recurrence-too-long"
    async with db() as s:
        assert len((await s.scalars(select(Grant))).all()) == 1  # refused input wrote nothing
