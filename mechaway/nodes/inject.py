"""InjectNode: messages on an interval, a cron-like schedule, or once at start."""

from __future__ import annotations

import asyncio
import time
from typing import Any, ClassVar

from mechaway.nodes.base import NodeParams, SourceNode, now
from mechaway.nodes.registry import register_node
from mechaway.tasks import OwnedTask


class InjectParams(NodeParams):
    #: seconds between messages
    interval: float | None = None
    #: cron expression (5 fields, or 6 with seconds), e.g. ``*/5 * * * *``
    cron: str | None = None
    #: send one message at start (after ``once_delay`` seconds)
    once: bool = False
    once_delay: float = 0.0
    #: payload to send; ``null`` sends the current epoch time
    payload: Any = None
    topic: str = ""
    #: stop after this many messages (0: never)
    repeat: int = 0

    def __post_init__(self) -> None:
        if self.interval is None and self.cron is None and not self.once:
            raise ValueError("set at least one of interval, cron, once")
        if self.interval is not None and self.interval <= 0:
            raise ValueError("interval must be > 0")
        if self.interval is not None and self.cron is not None:
            raise ValueError("set interval or cron, not both")
        if self.once_delay < 0 or self.repeat < 0:
            raise ValueError("once_delay and repeat must be >= 0")


@register_node("InjectNode")
class InjectNode(SourceNode):
    """Emit ``{payload, topic, ts}`` on an interval, a cron schedule, or once at start."""

    Params = InjectParams
    ports: ClassVar[tuple[str, ...]] = ("out",)

    @classmethod
    def check(cls, params: Any) -> list[str]:
        if params.cron is not None:
            from croniter import croniter

            if not croniter.is_valid(params.cron):
                return [f"cron: {params.cron!r} is not a valid cron expression"]
            try:  # valid syntax can still name no date ("0 0 30 2 *"): the task would die
                croniter(params.cron, time.time()).get_next(float)
            except Exception:  # CroniterBadDateError and kin
                return [f"cron: {params.cron!r} never fires (no such date)"]
        return []

    def __init__(self, node_id: str, params: Any, ctx: Any) -> None:
        super().__init__(node_id, params, ctx)
        self._task = OwnedTask(f"mechaway.inject[{ctx.flow_id}.{node_id}]")
        self.sent = 0

    async def start(self) -> None:
        self._task.start(self._run)

    async def stop(self) -> None:
        await self._task.stop()

    async def _fire(self) -> bool:
        """Send one message; False once ``repeat`` is reached."""
        await self.room()
        p = self.params
        ts = now()
        self.emit({"payload": ts if p.payload is None else p.payload, "topic": p.topic, "ts": ts})
        self.sent += 1
        return not (p.repeat and self.sent >= p.repeat)

    async def _run(self) -> None:
        p = self.params
        if p.once:
            await asyncio.sleep(p.once_delay)
            if not await self._fire():
                return
        if p.interval is not None:
            # schedule against a fixed origin so the interval does not drift
            t0 = time.monotonic()
            k = 1
            while True:
                delay = t0 + k * p.interval - time.monotonic()
                if delay > 0:
                    await asyncio.sleep(delay)
                else:
                    k = int((time.monotonic() - t0) / p.interval)  # skip missed ticks
                k += 1
                if not await self._fire():
                    return
        elif p.cron is not None:
            from croniter import croniter

            it = croniter(p.cron, time.time())
            while True:
                await asyncio.sleep(max(0.0, it.get_next(float) - time.time()))
                if not await self._fire():
                    return

    def status(self) -> dict[str, Any] | None:
        return {"sent": self.sent}
