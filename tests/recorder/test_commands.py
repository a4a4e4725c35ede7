"""Typed commands rebuilt from recordings (recorder/commands.py): the line editor, the echo
reader, and a real vendor typing through OpenSSH, the gateway and bash on a real sshd."""

from __future__ import annotations

import asyncio
import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from broker.gateway import Gateway
from policy.models import Device
from recorder.commands import (
    FULL_SCREEN,
    HISTORY,
    PASTE,
    TAB,
    UNKNOWN_KEY,
    Command,
    LineEditor,
    apply_echo,
    commands_from_recording,
    exec_command,
    replay,
)
from recorder.readers import Event
from tests.broker.test_gateway import only_session, pty_ssh, wait_exit
from tests.conftest import VendorLogin, grant
from tests.support.openssh import TmuxSession

Sessions = async_sessionmaker[AsyncSession]


def events(*items: tuple[str, str]) -> list[Event]:
    """Events 0.5 s apart: ("i", keys) or ("o", output)."""
    return [Event(0.5 * (n + 1), code, data.encode()) for n, (code, data) in enumerate(items)]


def typed(*chunks: str) -> list[str]:
    """The command texts for input chunks with no output between them."""
    return [c.text for c in replay(events(*(("i", c) for c in chunks)))]


# -- the line editor ---------------------------------------------------------------------


def test_enter_ends_a_command_and_carriage_return_or_newline_both_count() -> None:
    assert typed("ls -l\r", "uptime\n") == ["ls -l", "uptime"]


def test_backspace_and_del_correct_a_typo() -> None:
    assert typed("ecoo", "\x7f\x7f", "ho hi\b\bok\r") == ["echo ok"]


def test_backspace_on_an_empty_line_is_harmless() -> None:
    assert typed("\x7f\x7fid\r") == ["id"]


def test_ctrl_u_kills_back_to_the_start_and_ctrl_y_yanks_it() -> None:
    assert typed("rm -rf /data\x15ls\r") == ["ls"]
    assert typed("/tmp\x01ls \x05\x15echo \x19\r") == ["echo ls /tmp"]


def test_ctrl_w_kills_the_word_before_the_cursor() -> None:
    assert typed("cat /etc/shadow  \x17/etc/hostname\r") == ["cat /etc/hostname"]


def test_ctrl_k_and_meta_keys_kill_words() -> None:
    assert typed("echo one two\x01\x1bf\x0b\r") == ["echo"]
    assert typed("echo one-two\x1b\x7f\x1b\x7fthree\r") == ["echo three"]
    assert typed("echo one two\x01\x1bd\x1bdX\r") == ["X two"]


def test_ctrl_c_abandons_the_line() -> None:
    assert typed("reboot", "\x03", "uptime\r") == ["uptime"]


def test_arrow_keys_move_the_cursor_in_both_encodings() -> None:
    assert typed("echo wrld\x1b[D\x1b[D\x1b[Do\r") == ["echo world"]
    assert typed("echo wrld\x1bOD\x1bOD\x1bODo\x1bOC\x1bOCX\r") == ["echo worlXd"]


def test_home_end_and_ctrl_a_ctrl_e() -> None:
    assert typed("ho x\x01ec\x05y\r") == ["echo xy"]
    assert typed("ho x\x1b[Hec\x1b[Fy\r") == ["echo xy"]
    assert typed("ho x\x1b[1~ec\x1b[4~y\r") == ["echo xy"]


def test_delete_key_and_ctrl_d_delete_under_the_cursor() -> None:
    assert typed("echo abc\x01\x1b[3~\x04\x1b[3~\x04hi\r") == ["hi abc"]


def test_cursor_keys_stop_at_the_ends_of_the_line() -> None:
    assert typed("ab\x1b[D\x1b[D\x1b[D\x1b[DX\x1b[C\x1b[C\x1b[C\x1b[CY\r") == ["XabY"]


def test_a_key_split_across_two_input_chunks_is_joined() -> None:
    assert typed("abc\x1b[", "DX\r") == ["abXc"]
    assert typed("x\x1b[200", "~a\rb\x1b[201~\r") == ["xa\nb"]


def test_a_lone_esc_ending_a_chunk_is_the_esc_key() -> None:
    assert typed("abc\x1b", "d\r") == ["abcd"]


def test_bracketed_paste_keeps_newlines_inside_one_command() -> None:
    [cmd] = replay(events(("i", "\x1b[200~echo a\recho b\x1b[201~"), ("i", "\r")))
    assert cmd.text == "echo a\necho b" and PASTE in cmd.notes and cmd.exact


def test_empty_lines_are_not_commands() -> None:
    assert typed("\r", "   \r", "\x7f\r") == []


def test_a_line_without_enter_is_not_a_command() -> None:
    assert typed("ls\r", "shutdown -h now") == ["ls"]


def test_times_are_those_of_the_first_key_and_of_enter() -> None:
    base = datetime(2025, 3, 14, 9, 30, tzinfo=UTC)
    [cmd] = replay(events(("i", "l"), ("o", "l"), ("i", "s"), ("o", "s"), ("i", "\r")), base)
    assert cmd.typed_at == 0.5 and cmd.at == 2.5
    assert cmd.started_at == base + timedelta(seconds=2.5)


@given(
    st.text(
        alphabet=st.characters(
            min_codepoint=32, exclude_characters="\x7f", exclude_categories=["Cs"]
        )
    )
)
def test_printable_text_and_enter_is_that_command(text: str) -> None:
    assert typed(text + "\r") == ([text] if text.strip() else [])


@given(st.text())
def test_any_input_keeps_the_cursor_inside_the_line(text: str) -> None:
    editor = LineEditor()
    for ch in text:
        editor.key(ch)
        assert 0 <= editor.cursor <= len(editor.line)


# -- reading the shell's echo ------------------------------------------------------------


def test_tab_completion_is_read_from_the_echo() -> None:
    [cmd] = replay(
        events(
            ("i", "cat /et"),
            ("o", "cat /et"),
            ("i", "\t"),
            ("o", "c/"),
            ("i", "hostn\t"),
            ("o", "hostn"),
            ("o", "ame "),
            ("i", "\r"),
        )
    )
    assert cmd.text == "cat /etc/hostname " and cmd.exact and cmd.notes == (TAB,)


def test_tab_completion_in_the_middle_of_the_line() -> None:
    # bash inserts "c/" and redraws the rest of the line, then moves back over it
    [cmd] = replay(
        events(
            ("i", "cat /et -n\x1b[D\x1b[D\x1b[D"), ("i", "\t"), ("o", "c/ -n\b\b\b"), ("i", "\r")
        )
    )
    assert cmd.text == "cat /etc/ -n" and cmd.exact


def test_a_tab_that_completes_nothing_rings_the_bell() -> None:
    [cmd] = replay(events(("i", "ls /zz"), ("o", "ls /zz"), ("i", "\t"), ("o", "\a"), ("i", "\r")))
    assert cmd.text == "ls /zz" and cmd.exact


def test_a_completion_list_leaves_a_literal_tab_and_an_inexact_command() -> None:
    [cmd] = replay(
        events(
            ("i", "ls /etc/host"),
            ("o", "ls /etc/host"),
            ("i", "\t\t"),
            ("o", "\r\nhost.conf  hostname  hosts\r\ndev$ ls /etc/host"),
            ("i", "s\r"),
        )
    )
    assert cmd.text == "ls /etc/host\t\ts" and not cmd.exact and cmd.notes == (TAB,)


def test_an_echo_cut_short_by_the_next_key_is_not_trusted() -> None:
    # only "cat /e" of the burst's echo had arrived when Enter came
    [cmd] = replay(events(("i", "cat /et\t"), ("o", "cat /e"), ("i", "\r")))
    assert cmd.text == "cat /et\t" and not cmd.exact


def test_history_recall_is_read_from_the_echo() -> None:
    [cmd] = replay(
        events(
            ("i", "echo abc"),
            ("o", "echo abc"),
            ("i", "\x1b[A"),
            ("o", "\b\b\b\b\b\b\b\bls\x1b[K"),
            ("i", " -l\r"),
        )
    )
    assert cmd.text == "ls -l" and cmd.exact and cmd.notes == (HISTORY,)


def test_history_without_a_readable_echo_is_marked_inexact() -> None:
    [cmd] = replay(events(("i", "\x12"), ("o", "\r(reverse-i-search)`': "), ("i", "up\r")))
    assert not cmd.exact and HISTORY in cmd.notes


def test_unknown_keys_are_marked() -> None:
    [cmd] = replay(events(("i", "ab\x14\r")))  # ^T transpose, in the same burst as Enter
    assert cmd.text == "ab" and not cmd.exact and cmd.notes == (UNKNOWN_KEY,)
    [cmd] = replay(events(("i", "ab"), ("o", "ab"), ("i", "\x14"), ("o", "\b\bba"), ("i", "\r")))
    assert cmd.text == "ba" and cmd.exact and cmd.notes == ()


def test_lines_typed_in_a_full_screen_program_are_marked() -> None:
    cmds = replay(
        events(
            ("i", "vi notes\r"),
            ("o", "\r\n\x1b[?1049h\x1b[H\x1b[2J~\r\n~"),
            ("i", "ihello"),
            ("i", "\x1b"),
            ("i", ":wq\r"),
            ("o", "\x1b[?1049l"),
            ("i", "ZZ"),
            ("o", "\r\ndev$ "),
            ("i", "\x15ls\r"),
        )
    )
    assert [c.text for c in cmds] == ["vi notes", "ihello:wq", "ls"]
    assert [FULL_SCREEN in c.notes for c in cmds] == [False, True, False]


def test_leaving_a_full_screen_program_starts_a_fresh_line() -> None:
    cmds = replay(
        events(
            ("i", "less log\r"),
            ("o", "\x1b[?1049h"),
            ("i", "q"),
            ("o", "\x1b[?1049l"),
            ("i", "id\r"),
        )
    )
    assert [c.text for c in cmds] == ["less log", "id"]


@pytest.mark.parametrize(
    ("echo", "expected"),
    [
        ("def", ("abcdef", 6)),
        ("\b\bXY", ("aXY", 3)),
        ("\x1b[2D\x1b[K", ("a", 1)),
        ("\x1b[2D\x1b[1P", ("ac", 1)),
        ("\x1b[1D\x1b[2@", ("ab  c", 2)),
        ("\x1b[D\x1b[C", ("abc", 3)),
        ("\x1b[?2004h\a", ("abc", 3)),
    ],
)
def test_apply_echo_redraws_the_line(echo: str, expected: tuple[str, int]) -> None:
    result = apply_echo(list("abc"), 3, echo)
    assert result is not None
    assert ("".join(result[0]), result[1]) == expected


@pytest.mark.parametrize(
    "echo", ["\r\n", "\b\b\b\b", "\x1b[5C", "\x1b[2J", "\x1b]0;t\a", "\x1b[1;2H"]
)
def test_apply_echo_refuses_anything_but_an_in_line_redraw(echo: str) -> None:
    assert apply_echo(list("abc"), 3, echo) is None


# -- recordings --------------------------------------------------------------------------


def cast(*lines: list[object], timestamp: int = 1_741_944_615) -> bytes:
    header = {"version": 2, "width": 80, "height": 24, "timestamp": timestamp}
    return b"".join(json.dumps(x).encode() + b"\n" for x in (header, *lines))


def test_commands_from_an_asciicast_use_its_start_time() -> None:
    data = cast([0.25, "o", "$ "], [1.0, "i", "id"], [1.5, "i", "\r"], [1.6, "o", "uid=0\r\n"])
    [cmd] = commands_from_recording(data)
    assert cmd == Command(
        at=1.5,
        started_at=datetime(2025, 3, 14, 9, 30, 16, 500000, tzinfo=UTC),
        text="id",
        typed_at=1.0,
    )
    base = datetime(2025, 1, 1, tzinfo=UTC)
    assert commands_from_recording(data, base)[0].started_at == base + timedelta(seconds=1.5)


def test_a_recording_cut_short_by_a_crash_still_gives_its_commands() -> None:
    data = cast([1.0, "i", "uptime\r"], [2.0, "i", "whoami\r"]) + b'[3.0, "i", "rebo'
    assert [c.text for c in commands_from_recording(data)] == ["uptime", "whoami"]


def test_a_stream_recording_has_no_typed_lines() -> None:
    header = {"format": "sallyport-stream", "version": 1, "timestamp": 1.0, "command": "id"}
    assert commands_from_recording(json.dumps(header).encode() + b"\n") == []


def test_an_exec_session_command_is_its_only_command() -> None:
    at = datetime(2025, 3, 14, tzinfo=UTC)
    assert exec_command("systemctl status pumpd", at) == [
        Command(at=0.0, started_at=at, text="systemctl status pumpd", typed_at=0.0)
    ]
    assert exec_command(None, at) == []


# -- a vendor typing through the real gateway --------------------------------------------


async def until_screen(term: TmuxSession, check: object, timeout: float = 15) -> str:
    """Poll the screen until ``check(screen)`` holds."""
    assert callable(check)
    for _ in range(int(timeout / 0.05)):
        screen = await asyncio.to_thread(term.screen)
        if check(screen):
            return screen
        await asyncio.sleep(0.05)
    raise AssertionError(f"screen never matched; screen:\n{term.screen()}")


@pytest.mark.integration
async def test_commands_a_vendor_typed_through_openssh(
    vendor: VendorLogin, pump: Device, db: Sessions, gateway: Gateway, tmp_path: Path
) -> None:
    await grant(db, devices=["pump-12"])
    with pty_ssh(vendor, gateway, tmp_path / "pty") as term:
        await term.wait_for_async("Last login")  # keys typed before would echo locally
        term.sendline("PS1='dev''$ '")
        await term.wait_for_async("dev$")  # capture-pane drops trailing blanks
        term.send("ecoo")  # a typo, corrected with Backspace
        await term.wait_for_async("dev$ ecoo")
        term.send("BSpace", literal=False)
        term.send("BSpace", literal=False)
        term.sendline("ho typed-$((6*7))")
        await term.wait_for_async("typed-42")
        term.send("cat /etc/hostn")  # completed by bash's Tab
        await term.wait_for_async("dev$ cat /etc/hostn")
        term.send("Tab", literal=False)
        await term.wait_for_async("cat /etc/hostname")
        term.send_enter()
        term.send("echo wrld")  # corrected with the arrow keys
        for _ in range(3):
            term.send("Left", literal=False)
        term.sendline("o")
        await term.wait_for_async("\nworld")
        term.send("Up", literal=False)  # the same again, from history
        await until_screen(term, lambda s: s.count("dev$ echo world") == 2)
        term.send_enter()
        await until_screen(term, lambda s: s.count("\nworld") == 2)
        term.send("rm -rf /tmp/nothing")
        await term.wait_for_async("nothing")
        term.send("C-c", literal=False)  # abandoned
        await term.wait_for_async("nothing^C")  # the device's tty flushes typeahead at ^C
        term.sendline("exit 0")
        assert await wait_exit(term) == 0

    session, recording = await only_session(db)
    cmds = commands_from_recording(gateway.ctx.storage.read(recording.storage_key))
    assert [c.text for c in cmds] == [
        "PS1='dev''$ '",
        "echo typed-$((6*7))",
        "cat /etc/hostname ",
        "echo world",
        "echo world",
        "exit 0",
    ]
    assert all(c.exact for c in cmds)
    assert [c.notes for c in cmds] == [(), (), (TAB,), (), (HISTORY,), ()]
    assert [c.at for c in cmds] == sorted(c.at for c in cmds)
    assert all(c.typed_at is not None and c.typed_at <= c.at for c in cmds)
    started = [c.started_at for c in cmds]
    assert all(s is not None and session.started_at - timedelta(seconds=2) < s for s in started)
