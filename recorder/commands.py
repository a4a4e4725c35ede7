"""The commands a vendor typed, rebuilt from a session's recording.

A terminal (PTY) session's asciicast holds every byte the vendor sent ("i" events) and
every byte the device sent back ("o" events). Replaying the keys through a small line
editor (readline's emacs keys: insert, Backspace, Delete, ^U/^K/^W/^Y, cursor keys,
Home/End, ^A/^E, bracketed paste) yields each line as the shell received it at Enter.

Some keys change the line in ways the keys alone do not tell: Tab completion, history
recall (Up/Down, ^P/^N, ^R), and keys the editor does not know. For those the shell's own
echo is read instead: when such a key arrives in a burst of keys without Enter, the
output up to the next keystroke is applied as terminal edits (characters overwrite at the
cursor, ``\\b`` and ``CSI C/D`` move, ``CSI K`` clears, ``CSI P``/``@`` delete/insert) to
the line as it stood before the burst. That is how bash redraws a line, so the result is
what the shell holds. When the echo cannot be read that way (a completion list, a prompt
redraw, nothing echoed yet), the keys are replayed as typed, a Tab as a literal tab, and
the command is marked inexact.

Lines entered while a full-screen program (the terminal's alternate screen: an editor,
``less``, ``top``) is showing are kept but marked: they are keystrokes to that program,
not shell commands.

Exec sessions without a terminal have one command: the one the vendor's client asked the
gateway to run (``Session.command``).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from recorder.channel import ASCIICAST
from recorder.readers import Event, parse

# What a Command's notes say happened while its line was edited.
TAB = "tab-completion"
HISTORY = "history"
UNKNOWN_KEY = "unknown-key"
FULL_SCREEN = "full-screen"
PASTE = "paste"


@dataclass(frozen=True)
class Command:
    """One line the vendor submitted with Enter."""

    at: float  # seconds into the recording when Enter was pressed (0 for an exec command)
    started_at: datetime | None  # wall-clock time of that Enter; None when unknown
    text: str
    typed_at: float | None = None  # seconds into the recording of the line's first key
    notes: tuple[str, ...] = ()  # TAB, HISTORY, UNKNOWN_KEY, FULL_SCREEN, PASTE
    exact: bool = True  # False: part of the line could be read neither from keys nor echo


_PASTE_START, _PASTE_END = "\x1b[200~", "\x1b[201~"
_ENTER = {"\r", "\n"}
_LEFT = {"\x1b[D", "\x1bOD", "\x02"}
_RIGHT = {"\x1b[C", "\x1bOC", "\x06"}
_HOME = {"\x1b[H", "\x1bOH", "\x1b[1~", "\x1b[7~", "\x01"}
_END = {"\x1b[F", "\x1bOF", "\x1b[4~", "\x1b[8~", "\x05"}
_WORD_LEFT = {"\x1bb", "\x1b[1;5D", "\x1b[1;3D"}
_WORD_RIGHT = {"\x1bf", "\x1b[1;5C", "\x1b[1;3C"}
_BACKSPACE = {"\x7f", "\x08"}
_DELETE = {"\x1b[3~"}
_HISTORY_KEYS = {
    "\x1b[A", "\x1bOA", "\x1b[B", "\x1bOB",  # Up, Down
    "\x10", "\x0e", "\x12", "\x0f",  # ^P ^N ^R ^O
    "\x1b.", "\x1b_", "\x1b<", "\x1b>",  # yank-last-arg, first/last history line
}  # fmt: skip
# keys that leave the line as it is (redraw, flow control, signals to a running job)
_NO_OP = {"\x0c", "\x07", "\x11", "\x13", "\x1a", "\x1c", "\x1b"}

# One key as the terminal sends it: CSI (ESC [ params final), SS3 (ESC O x), Meta (ESC x),
# or one character; or the start of a CSI/SS3 key cut at the end of a chunk (carried to the
# next). A lone ESC ending a chunk is the Esc key itself: a terminal sends a key's bytes
# in one write, so the next chunk is the next key.
_KEY = re.compile(
    r"(?P<key>\x1b\[[0-?]*[ -/]*[@-~]|\x1bO.|\x1b[^\[O])"
    r"|(?P<cut>\x1b(?:\[[0-?]*[ -/]*|O)\Z)"
    r"|(?P<char>.)",
    re.DOTALL,
)
# Output escapes for the echo reader.
_ECHO = re.compile(r"\x1b\[([0-?]*)([ -/]*[@-~])|\x1b.?|.", re.DOTALL)
# Alternate screen on/off: full-screen programs.
_ALT_SCREEN = re.compile(r"\x1b\[\?(?:1049|1047|47)([hl])")


def _is_word(ch: str) -> bool:
    return ch.isalnum() or ch == "_"


class LineEditor:
    """The shell's line as the vendor edits it (emacs-mode readline, the bash default)."""

    def __init__(self) -> None:
        self.line: list[str] = []
        self.cursor = 0
        self.killed = ""
        self.notes: set[str] = set()
        self.exact = True
        self.pasting = False
        self.typed_at: float | None = None

    def snapshot(self) -> tuple[list[str], int]:
        return list(self.line), self.cursor

    def restore(self, line: list[str], cursor: int) -> None:
        self.line, self.cursor = line, cursor

    def reset(self) -> None:
        self.line, self.cursor, self.notes, self.exact = [], 0, set(), True
        self.pasting, self.typed_at = False, None

    def text(self) -> str:
        return "".join(self.line)

    def insert(self, text: str) -> None:
        self.line[self.cursor : self.cursor] = list(text)
        self.cursor += len(text)

    def key(self, key: str) -> str | None:
        """Apply one key. Returns TAB, HISTORY or UNKNOWN_KEY when the key's effect is
        not known from the key alone (the caller reads the echo), else None."""
        if self.pasting:
            if key == _PASTE_END:
                self.pasting = False
            else:
                self.insert("\n" if key in _ENTER else key)
            return None
        if key == _PASTE_START:
            self.pasting = True
            self.notes.add(PASTE)
        elif len(key) == 1 and (key >= " " and key != "\x7f"):
            self.insert(key)
        elif key == "\t":
            self.insert("\t")
            return TAB
        elif key in _HISTORY_KEYS:
            return HISTORY
        elif not self._edit(key) and not self._move(key) and key not in _NO_OP:
            return UNKNOWN_KEY
        return None

    def _edit(self, key: str) -> bool:
        line, cur = self.line, self.cursor
        if key in _BACKSPACE:
            if cur:
                del line[cur - 1]
                self.cursor -= 1
        elif key in _DELETE or (key == "\x04" and line):
            del line[cur : cur + 1]
        elif key == "\x04":
            pass  # ^D on an empty line: end of input, the shell exits
        elif key == "\x15":  # ^U: kill back to the start
            self.killed, self.line, self.cursor = "".join(line[:cur]), line[cur:], 0
        elif key == "\x0b":  # ^K: kill to the end
            self.killed, self.line = "".join(line[cur:]), line[:cur]
        elif key == "\x17":  # ^W: kill the whitespace-delimited word before the cursor
            self._kill_back(self._word_start(cur, str.isspace))
        elif key == "\x1b\x7f":  # Meta-Backspace: kill the alphanumeric word before
            self._kill_back(self._word_start(cur, lambda c: not _is_word(c)))
        elif key == "\x1bd":  # Meta-d: kill the word after the cursor
            end = self._word_end(cur)
            self.killed, self.line = "".join(line[cur:end]), line[:cur] + line[end:]
        elif key == "\x19":  # ^Y: yank the last kill
            self.insert(self.killed)
        else:
            return False
        return True

    def _move(self, key: str) -> bool:
        if key in _LEFT:
            self.cursor = max(0, self.cursor - 1)
        elif key in _RIGHT:
            self.cursor = min(len(self.line), self.cursor + 1)
        elif key in _HOME:
            self.cursor = 0
        elif key in _END:
            self.cursor = len(self.line)
        elif key in _WORD_LEFT:
            self.cursor = self._word_start(self.cursor, lambda c: not _is_word(c))
        elif key in _WORD_RIGHT:
            self.cursor = self._word_end(self.cursor)
        else:
            return False
        return True

    def _word_start(self, pos: int, gap: Callable[[str], bool]) -> int:
        while pos and gap(self.line[pos - 1]):
            pos -= 1
        while pos and not gap(self.line[pos - 1]):
            pos -= 1
        return pos

    def _word_end(self, pos: int) -> int:
        n = len(self.line)
        while pos < n and not _is_word(self.line[pos]):
            pos += 1
        while pos < n and _is_word(self.line[pos]):
            pos += 1
        return pos

    def _kill_back(self, start: int) -> None:
        self.killed = "".join(self.line[start : self.cursor])
        del self.line[start : self.cursor]
        self.cursor = start


def apply_echo(line: list[str], cursor: int, echo: str) -> tuple[list[str], int] | None:
    """The line after the shell's redraw ``echo``, starting from ``line``/``cursor``; None
    when the echo is not a plain in-line redraw (a new line, a prompt, other escapes)."""
    line = list(line)
    for match in _ECHO.finditer(echo):
        piece, params, final = match.group(0), match.group(1), match.group(2)
        if final is not None:
            step = _csi(line, cursor, params, final)
            if step is None:
                return None
            line, cursor = step
        elif piece == "\b":
            if cursor == 0:
                return None  # moving into the prompt: not an in-line redraw
            cursor -= 1
        elif piece == "\a":
            continue
        elif len(piece) == 1 and piece >= " " and piece != "\x7f":
            if cursor < len(line):
                line[cursor] = piece
            else:
                line.append(piece)
            cursor += 1
        else:
            return None
    return line, cursor


def _csi(line: list[str], cursor: int, params: str, final: str) -> tuple[list[str], int] | None:
    if params == "?2004" and final in "hl":  # bracketed-paste mode toggled by readline
        return line, cursor
    if params and not params.isdigit():
        return None
    n = int(params or "1")
    if final == "K" and params in ("", "0"):
        return line[:cursor], cursor
    if final == "D" and n <= cursor:
        return line, cursor - n
    if final == "C" and cursor + n <= len(line):
        return line, cursor + n
    if final == "P":
        return line[:cursor] + line[cursor + n :], cursor
    if final == "@":
        return line[:cursor] + [" "] * n + line[cursor:], cursor
    return None


class _Replay:
    """Walks the events in order, feeding keys to the editor and output to the echo
    reader; collects the submitted lines."""

    def __init__(self, base: datetime | None) -> None:
        self.base = base
        self.editor = LineEditor()
        self.commands: list[Command] = []
        self.carry = ""  # a key cut at the end of the previous input chunk
        self.full_screen = False
        # a burst of keys waiting for its echo: line before it, cursor, its unknown keys
        self.pending: tuple[list[str], int, set[str]] | None = None
        self.echo: list[str] = []

    def output(self, text: str) -> None:
        if self.pending is not None:
            self.echo.append(text)
        for match in _ALT_SCREEN.finditer(text):
            self.full_screen = match.group(1) == "h"
            self.editor.reset()  # the shell starts a fresh line around a full-screen program
            self.pending = None

    def input(self, time: float, text: str) -> None:
        self.settle()
        data, self.carry = self.carry + text, ""
        before = self.editor.snapshot()
        unknown: set[str] = set()
        ended = False
        for match in _KEY.finditer(data):
            key = match.group(0)
            if match.group("cut") is not None:
                self.carry = key
                break
            if self.editor.typed_at is None:
                self.editor.typed_at = time
            if key in _ENTER and not self.editor.pasting:
                self._submit(time, unknown)
                unknown, ended = set(), True
            elif key == "\x03" and not self.editor.pasting:  # ^C: the line is abandoned
                self.editor.reset()
                unknown, ended = set(), True
            else:
                effect = self.editor.key(key)
                if effect is not None:
                    unknown.add(effect)
        if unknown and not ended:
            self.pending, self.echo = (*before, unknown), []
        else:
            self._note(unknown)

    def settle(self) -> None:
        """Read the echo of the last burst of keys, if it is waiting for one."""
        if self.pending is None:
            return
        line, cursor, unknown = self.pending
        self.pending = None
        echo = "".join(self.echo)
        redrawn = apply_echo(line, cursor, echo) if echo else None
        if redrawn is None or not self._agrees(redrawn[0], unknown):
            self._note(unknown)
            return
        self.editor.restore(*redrawn)
        self.editor.notes |= unknown - {UNKNOWN_KEY}

    def _agrees(self, redrawn: list[str], unknown: set[str]) -> bool:
        """A Tab only adds text where it was pressed, so the redrawn line must be the
        typed one with something (maybe nothing) at each tab. This catches an echo that
        had not all arrived before the next key."""
        if unknown != {TAB}:
            return True
        parts = self.editor.text().split("\t")
        pattern = ".*?".join(re.escape(part) for part in parts)
        return re.fullmatch(pattern, "".join(redrawn), re.DOTALL) is not None

    def _note(self, unknown: set[str]) -> None:
        if unknown:
            self.editor.notes |= unknown
            self.editor.exact = False

    def _submit(self, time: float, unknown: set[str]) -> None:
        self._note(unknown)
        ed = self.editor
        text = ed.text()
        if text.strip():
            notes = set(ed.notes) | ({FULL_SCREEN} if self.full_screen else set())
            self.commands.append(
                Command(
                    at=time,
                    started_at=self.base + timedelta(seconds=time) if self.base else None,
                    text=text,
                    typed_at=ed.typed_at,
                    notes=tuple(sorted(notes)),
                    exact=ed.exact,
                )
            )
        ed.reset()


def replay(events: Iterable[Event], base: datetime | None = None) -> list[Command]:
    """The lines submitted with Enter, from a recording's events in order."""
    state = _Replay(base)
    for event in events:
        text = event.data.decode("utf-8", "replace")
        if event.code == "i":
            state.input(event.time, text)
        elif event.code == "o":
            state.output(text)
    state.settle()
    return state.commands


def commands_from_recording(data: bytes, base: datetime | None = None) -> list[Command]:
    """The commands typed in an asciicast recording (a prefix cut short is fine).

    ``base`` is when the recording started; by default the header's ``timestamp``
    (whole seconds). Recordings without a terminal hold no typed lines: [].
    """
    parsed = parse(data)
    if parsed.format != ASCIICAST:
        return []
    if base is None:
        stamp = parsed.header.get("timestamp")
        if isinstance(stamp, int | float):
            base = datetime.fromtimestamp(stamp, UTC)
    return replay(parsed.events, base)


def exec_command(command: str | None, started_at: datetime | None) -> list[Command]:
    """An exec session's command line, as the vendor's client sent it."""
    if command is None:
        return []
    return [Command(at=0.0, started_at=started_at, text=command, typed_at=0.0)]
