"""Pushes every open recording to storage at a fixed interval (at most one second)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any, Protocol

import structlog

from recorder.errors import RecorderError

log = structlog.get_logger(__name__)


class Flushable(Protocol):
    def flush(self) -> None: ...


FailureHandler = Callable[[Any, RecorderError], None]


class Flusher:
    def __init__(self, interval: float = 0.5) -> None:
        self.interval = interval
        self._open: dict[Flushable, FailureHandler] = {}
        self._task: asyncio.Task[None] | None = None

    def add(self, recording: Flushable, on_failure: FailureHandler) -> None:
        self._open[recording] = on_failure

    def discard(self, recording: Flushable) -> None:
        self._open.pop(recording, None)

    def flush_all(self) -> None:
        for recording, on_failure in list(self._open.items()):
            try:
                recording.flush()
            except RecorderError as exc:
                self._open.pop(recording, None)
                on_failure(recording, exc)

    async def run(self) -> None:
        while True:
            await asyncio.sleep(self.interval)
            self.flush_all()

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self.run(), name="flusher")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
            self._task = None
        self.flush_all()
