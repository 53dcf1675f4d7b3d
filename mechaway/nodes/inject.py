"""InjectNode: messages on an interval, a cron-like schedule, or once at start.

An interval counts elapsed time (``time.monotonic()``): a step of the wall clock neither
stalls it nor fires a burst. A cron schedule follows the wall clock, across steps too
(``CronPlan``): the task looks at the clock at least every ``CRON_POLL_S``; a slot the
clock stepped over fires once if it is at most ``CRON_GRACE_S`` late (cronie's rule for
forward steps under 3 hours), else it is skipped, and the next slot is planned from the
new time (never a burst of the missed ones). After a backward step of at most
``CRON_GRACE_S`` the planned slot is kept (a slot that already fired does not fire
again); after a larger one the next slot is planned from the new time.
"""

from __future__ import annotations

import asyncio
import time
from typing import Annotated, Any, ClassVar

from msgspec import Meta

from mechaway.nodes.base import NodeParams, SourceNode, now
from mechaway.nodes.context import NodeContext
from mechaway.nodes.registry import register_node
from mechaway.tasks import OwnedTask

#: a cron slot late by at most this much (the clock stepped over it) still fires, once
CRON_GRACE_S = 3 * 3600.0
#: a cron inject looks at the wall clock at least this often while it waits
CRON_POLL_S = 60.0


class CronPlan:
    """When a cron schedule fires, by the wall clock, across steps of that clock."""

    def __init__(self, expr: str, now: float) -> None:
        self.expr = expr
        #: the wall-clock time of the next slot
        self.target = self._after(now)
        self._seen = now
        #: slots skipped because the clock stepped far past them
        self.skipped = 0

    def _after(self, t: float) -> float:
        from croniter import croniter

        return float(croniter(self.expr, t).get_next(float))

    def poll(self, now: float) -> float | None:
        """``None``: fire now (the slot after it is planned); else seconds to wait."""
        back = self._seen - now
        self._seen = now
        if now >= self.target:
            late = now - self.target
            self.target = self._after(now)
            if late <= CRON_GRACE_S:
                return None
            self.skipped += 1
        elif back > CRON_GRACE_S:
            self.target = self._after(now)  # the clock went far back: plan from it
        return min(self.target - now, CRON_POLL_S)


class InjectParams(NodeParams):
    interval: Annotated[
        Annotated[float, Meta(gt=0)] | None,
        Meta(
            description="seconds between messages (elapsed time; not with cron; at least one "
            "of interval, cron, once)"
        ),
    ] = None
    cron: Annotated[
        str | None,
        Meta(
            description="cron expression (5 fields, or 6 with seconds), e.g. */5 * * * *, on "
            "the wall clock (not with interval; checked at deploy)"
        ),
    ] = None
    once: Annotated[
        bool, Meta(description="send one message at start, after once_delay seconds")
    ] = False
    once_delay: Annotated[
        float, Meta(ge=0, description="seconds from start to the `once` message")
    ] = 0.0
    payload: Annotated[
        Any, Meta(description="the payload sent; null sends the current epoch time")
    ] = None
    topic: Annotated[str, Meta(description="the topic of the messages sent")] = ""
    repeat: Annotated[int, Meta(ge=0, description="stop after this many messages (0: never)")] = 0

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.interval is None and self.cron is None and not self.once:
            raise ValueError("set at least one of interval, cron, once")
        if self.interval is not None and self.cron is not None:
            raise ValueError("set interval or cron, not both")


@register_node("InjectNode")
class InjectNode(SourceNode[InjectParams]):
    """Emit ``{payload, topic, ts}`` on an interval, a cron schedule, or once at start."""

    ports: ClassVar[tuple[str, ...]] = ("out",)

    @classmethod
    def check(cls, params: InjectParams) -> list[str]:
        if params.cron is not None:
            from croniter import croniter

            if not croniter.is_valid(params.cron):
                return [f"cron: {params.cron!r} is not a valid cron expression"]
            try:  # valid syntax can still name no date ("0 0 30 2 *"): the task would die
                croniter(params.cron, time.time()).get_next(float)
            except Exception:  # CroniterBadDateError and kin
                return [f"cron: {params.cron!r} never fires (no such date)"]
        return []

    def __init__(self, node_id: str, params: InjectParams, ctx: NodeContext) -> None:
        super().__init__(node_id, params, ctx)
        self._task = OwnedTask(f"mechaway.inject[{ctx.flow_id}.{node_id}]")
        self.sent = 0
        self.cron_plan: CronPlan | None = None

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
            self.cron_plan = plan = CronPlan(p.cron, time.time())
            while True:
                wait = plan.poll(time.time())
                if wait is not None:
                    await asyncio.sleep(wait)
                elif not await self._fire():
                    return

    def status(self) -> dict[str, Any] | None:
        return {"sent": self.sent}
