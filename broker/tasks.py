"""Background tasks that are kept referenced until they finish (no orphaned tasks)."""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from typing import Any

import structlog

log = structlog.get_logger(__name__)


_SERVICE_TASKS = ("supervisor", "supervisor-listen", "flusher", "checkpoints")


class TaskSet:
    def __init__(self) -> None:
        self._tasks: set[asyncio.Task[Any]] = set()

    def spawn(self, coro: Coroutine[Any, Any, Any], name: str | None = None) -> asyncio.Task[Any]:
        task = asyncio.get_running_loop().create_task(coro, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._done)
        return task

    def _done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("task failed", task=task.get_name(), exc_info=task.exception())

    async def drain(self, within: float) -> None:
        """Wait (at most ``within`` seconds) for tasks that are finishing sessions."""
        pending = [t for t in self._tasks if t.get_name() not in _SERVICE_TASKS]
        if pending:
            await asyncio.wait(pending, timeout=within)

    async def cancel_all(self) -> None:
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    def __len__(self) -> int:
        return len(self._tasks)
