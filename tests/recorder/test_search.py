"""Search across typed commands, terminal output and files moved (recorder/search.py)."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import pytest
from sqlalchemy import select, update

from broker.gateway import Gateway
from policy.errors import InvalidInput
from policy.models import Device, Recording, RecordingStatus
from recorder import search as search_module
from recorder.search import Hit, search, strip_ansi
from tests.broker.test_gateway import only_session, pty_ssh, wait_exit
from tests.conftest import VendorLogin, grant
from tests.recorder.test_review import SHELL, T0, Script, Sessions, World, world

__all__ = ["world"]  # the fixture, imported for these tests

ALARMS: Script = [
    (0.1, "o", "$ "),
    (1.0, "i", "tail /var/log/PUMP.log\r"),
    (1.1, "o", "tail /var/log/PUMP.log\r\n"),
    # the line is colored and split over two writes: it still matches as plain text
    (1.2, "o", "12:00 \x1b[1;31mOCCLUSION\x1b[0m ala"),
    (1.3, "o", "rm on line 2\r\n12:05 occlusion alarm cleared\r\n$ "),
]


async def find(world: World, db: Sessions, query: str, **kwargs: object) -> list[Hit]:
    async with db() as s:
        result = await search(s, world.storage, query, **kwargs)  # type: ignore[arg-type]
    return result.hits


def test_strip_ansi_leaves_the_text_a_person_saw() -> None:
    raw = (
        "\x1b]0;spdevice@pump: ~\x07\x1b[01;32mspdevice@pump\x1b[00m:~$ ls\r\n"
        "\x1b[?2004l\x1b(Bok\x1bP1$r0m\x1b\\ done\r\nab\b\bxy\x07\r\n"
    )
    assert strip_ansi(raw) == "spdevice@pump:~$ ls\nok done\nxy\n"


async def test_a_typed_command_is_found_in_any_case(world: World, db: Sessions) -> None:
    sid = await world.session(script=SHELL)
    await world.session(login="mon1", device="monitor-3", script=ALARMS)
    hits = await find(world, db, "ETC/PUMP/VERSION")
    assert [(h.session_id, h.kind, h.at, h.snippet) for h in hits] == [
        (sid, "command", 2.0, "cat /etc/pump/version")
    ]
    assert hits[0].recording_id is not None


async def test_output_is_matched_as_plain_text_across_escapes_and_writes(
    world: World, db: Sessions
) -> None:
    sid = await world.session(script=ALARMS)
    hits = await find(world, db, "occlusion alarm")
    assert [(h.session_id, h.kind, h.at) for h in hits] == [
        (sid, "output", 1.2),
        (sid, "output", 1.3),
    ]
    assert "12:00 OCCLUSION alarm on line 2 12:05" in hits[0].snippet
    assert "\x1b" not in hits[0].snippet and "\n" not in hits[0].snippet


async def test_the_echo_of_a_matching_command_is_not_a_second_hit(
    world: World, db: Sessions
) -> None:
    await world.session(script=ALARMS)
    hits = await find(world, db, "pump.log")
    assert [(h.kind, h.at) for h in hits] == [("command", 1.0)]


async def test_exec_commands_their_output_and_files_moved_are_found(
    world: World, db: Sessions
) -> None:
    sid = await world.session(
        kind="exec",
        command="pumpctl --dump-config",
        terminal=False,
        script=[(0.5, "o", "rate=5\nbolus=dump-config-disabled\n")],
    )
    await world.audit.record(
        "broker:transfer:file",
        actor="vendor1",
        session_id=sid,
        path="/srv/pump/dump-config.json",
        direction="download",
        size=10,
        sha256="00" * 32,
        complete=True,
    )
    hits = await find(world, db, "dump-config")
    assert [(h.kind, h.recording_id is None, h.snippet) for h in hits] == [
        ("command", True, "pumpctl --dump-config"),
        ("output", False, "rate=5 bolus=dump-config-disabled"),
        ("transfer", True, "download /srv/pump/dump-config.json"),
    ]


async def test_file_transfer_recordings_are_not_searched_as_output(
    world: World, db: Sessions
) -> None:
    await world.session(kind="sftp", terminal=False, script=[(0.5, "o", "SECRETPAYLOAD")])
    await world.session(
        kind="exec", command="scp -f /x", terminal=False, script=[(0.5, "o", "SECRETPAYLOAD")]
    )
    assert await find(world, db, "secretpayload") == []


async def test_newest_sessions_first_and_the_limit(world: World, db: Sessions) -> None:
    old = await world.session(script=SHELL)
    new = await world.session(script=SHELL, started=T0 + timedelta(hours=1))
    assert [h.session_id for h in await find(world, db, "firmware")] == [new, old]
    async with db() as s:
        result = await search(s, world.storage, "firmware", limit=1)
    assert [h.session_id for h in result.hits] == [new]
    assert not result.complete


async def test_the_scan_bound_and_the_time_range_are_reported(world: World, db: Sessions) -> None:
    old = await world.session(script=SHELL)
    new = await world.session(script=SHELL, started=T0 + timedelta(hours=1))
    async with db() as s:
        bounded = await search(s, world.storage, "firmware", max_sessions=1)
        early = await search(s, world.storage, "firmware", until=T0 + timedelta(minutes=30))
        everything = await search(s, world.storage, "firmware")
    assert [h.session_id for h in bounded.hits] == [new]
    assert (bounded.sessions_scanned, bounded.sessions_in_range, bounded.complete) == (
        1,
        2,
        False,
    )
    assert [h.session_id for h in early.hits] == [old] and early.complete
    assert everything.complete and everything.sessions_scanned == 2


async def test_recordings_it_cannot_search_are_named(
    world: World, db: Sessions, monkeypatch: pytest.MonkeyPatch
) -> None:
    await world.session(script=SHELL)
    await world.session(script=SHELL, started=T0 + timedelta(hours=1))
    gone = await world.session(script=SHELL, started=T0 + timedelta(hours=2))
    async with db() as s:
        rows = {r.session_id: r for r in await s.scalars(select(Recording))}
    (world.storage.root / rows[gone].storage_key).unlink()
    monkeypatch.setattr(search_module, "MAX_SCAN_BYTES", rows[gone].size or 0)
    async with db() as s:  # the other two are as large: only the expired one is not read
        await s.execute(
            update(Recording)
            .where(Recording.session_id != gone)
            .values(size=(rows[gone].size or 0) + 1)
        )
        await s.commit()
        result = await search(s, world.storage, "firmware")
    assert result.hits == [] and not result.complete
    assert len(result.skipped) == 3
    assert any(rows[gone].storage_key in s and "cannot read" in s for s in result.skipped)
    assert sum("over the scan limit" in s for s in result.skipped) == 2


async def test_expired_recordings_are_left_out_quietly(world: World, db: Sessions) -> None:
    sid = await world.session(script=SHELL)
    async with db() as s:
        await s.execute(
            update(Recording)
            .where(Recording.session_id == sid)
            .values(status=RecordingStatus.EXPIRED)
        )
        await s.commit()
        result = await search(s, world.storage, "firmware")
    assert result.hits == [] and result.complete


@pytest.mark.parametrize(
    ("query", "kwargs", "code"),
    [
        ("", {}, "search-query-empty"),
        ("   ", {}, "search-query-empty"),
        ("x" * 201, {}, "search-query-too-long"),
        ("x", {"limit": 0}, "search-limit-invalid"),
        ("x", {"since": T0, "until": T0}, "time-range-invalid"),
    ],
)
async def test_bad_searches_are_refused_with_a_reason(
    world: World, db: Sessions, query: str, kwargs: dict[str, object], code: str
) -> None:
    with pytest.raises(InvalidInput) as caught:
        await find(world, db, query, **kwargs)
    assert caught.value.code == code and caught.value.message


@pytest.mark.integration
async def test_a_command_typed_through_the_gateway_is_found(
    vendor: VendorLogin, pump: Device, db: Sessions, gateway: Gateway, tmp_path: Path
) -> None:
    await grant(db, devices=["pump-12"])
    with pty_ssh(vendor, gateway, tmp_path / "pty") as term:
        await term.wait_for_async("Last login")
        term.send("echo calibrate-$((6*7))x")
        term.send("BSpace", literal=False)
        term.send_enter()
        await term.wait_for_async("calibrate-42")
        term.sendline("exit 0")
        assert await wait_exit(term) == 0
    session, recording = await only_session(db)
    async with db() as s:
        typed = await search(s, gateway.ctx.storage, "Calibrate-$((")
        shown = await search(s, gateway.ctx.storage, "calibrate-42")
    assert [(h.session_id, h.recording_id, h.kind, h.snippet) for h in typed.hits] == [
        (session.id, recording.id, "command", "echo calibrate-$((6*7))")
    ]
    [hit] = shown.hits
    assert hit.kind == "output" and "$((6*7)) calibrate-42 " in hit.snippet
    assert typed.hits[0].at < hit.at
