"""An owned, named background task: started once, stopped idempotently (STYLE.md 6)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Coroutine
from typing import Any

log = logging.getLogger("mechaway.tasks")


class OwnedTask:
    """One background task a component owns; ``stop`` cancels it and waits for it."""

    __slots__ = ("_task", "name")

    def __init__(self, name: str) -> None:
        self.name = name
        self._task: asyncio.Task[Any] | None = None

    @property
    def running(self) -> bool:
        return self._task is not None and not self._task.done()

    def start(self, run: Callable[[], Coroutine[Any, Any, Any]]) -> None:
        """Start ``run()`` unless already started."""
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(run(), name=self.name)
            self._task.add_done_callback(self._ended)

    def _ended(self, task: asyncio.Task[Any]) -> None:
        """A task that dies of an exception says so when it dies, not at ``stop`` (a source
        that stopped producing would otherwise look healthy until then)."""
        if not task.cancelled() and (exc := task.exception()) is not None:
            log.error("%s stopped: %s: %s", self.name, type(exc).__name__, exc, exc_info=exc)

    async def stop(self) -> None:
        """Cancel the task and wait until it ended (its failure was logged). Idempotent."""
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
