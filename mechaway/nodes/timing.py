"""Time-aware pure nodes: RateLimit, Debounce, Window, Delay."""

from __future__ import annotations

import asyncio
import collections
import math
import reprlib
import time
from math import isfinite
from typing import Annotated, Any, ClassVar, Literal

from msgspec import Meta

from mechaway.nodes.base import Message, Node, NodeParams, P, Result, get_path, now, split_path
from mechaway.nodes.context import NodeContext
from mechaway.nodes.registry import register_node


class RateLimitParams(NodeParams):
    rate: Annotated[
        float,
        Meta(
            gt=0,
            description="at most this many messages per `per` seconds (a token bucket: "
            "bursts of up to `rate` pass)",
        ),
    ]
    per: Annotated[float, Meta(gt=0, description="the period of `rate`, in seconds")] = 1.0
    persist: Annotated[
        bool, Meta(description="the bucket's tokens survive restarts (node context)")
    ] = False


@register_node("RateLimitNode")
class RateLimitNode(Node[RateLimitParams]):
    """Pass at most ``rate`` messages per ``per`` seconds; the excess is dropped and counted."""

    stateful: ClassVar[bool] = True

    def __init__(self, node_id: str, params: RateLimitParams, ctx: NodeContext) -> None:
        super().__init__(node_id, params, ctx)
        self._capacity = float(params.rate)
        self._fill = params.rate / params.per
        self._tokens = self._capacity
        self._t = time.monotonic()

    def process(self, msg: Message) -> Result:
        t = time.monotonic()
        self._tokens = min(self._capacity, self._tokens + (t - self._t) * self._fill)
        self._t = t
        if self._tokens >= 1.0:
            self._tokens -= 1.0
            return msg
        self.stats.dropped += 1
        return None

    def get_state(self) -> Any:
        return {"tokens": self._tokens}

    def set_state(self, state: Any) -> None:
        if isinstance(state, dict) and isinstance(state.get("tokens"), int | float):
            self._tokens = min(self._capacity, float(state["tokens"]))


class _TimerNode(Node[P]):
    """Base for nodes that emit later from the event loop; timers die with the node."""

    def __init__(self, node_id: str, params: P, ctx: NodeContext) -> None:
        super().__init__(node_id, params, ctx)
        self._loop: asyncio.AbstractEventLoop | None = None

    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()

    def _later(self, delay: float, fn: Any, *args: Any) -> asyncio.TimerHandle:
        assert self._loop is not None, "node not started"
        return self._loop.call_later(delay, fn, *args)


class DebounceParams(NodeParams):
    quiet: Annotated[
        float,
        Meta(gt=0, description="emit the last message once no new one came for this many seconds"),
    ]


@register_node("DebounceNode")
class DebounceNode(_TimerNode[DebounceParams]):
    """Emit only the last of a burst, ``quiet`` seconds after the burst ends."""

    def __init__(self, node_id: str, params: DebounceParams, ctx: NodeContext) -> None:
        super().__init__(node_id, params, ctx)
        self._pending: Message | None = None
        self._timer: asyncio.TimerHandle | None = None

    def process(self, msg: Message) -> Result:
        if self._pending is not None:
            self.stats.dropped += 1  # superseded by a newer message of the burst
        self._pending = msg
        if self._timer is not None:
            self._timer.cancel()
        self._timer = self._later(self.params.quiet, self._flush)
        return None

    def _flush(self) -> None:
        msg, self._pending, self._timer = self._pending, None, None
        if msg is not None:
            self.emit(msg, "out")

    async def stop(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self._flush()  # a removed node hands on what it held rather than lose it


Agg = Literal["mean", "min", "max", "sum", "last", "first", "count"]


class WindowParams(NodeParams):
    property: Annotated[str, Meta(description="dotted path of the numeric value aggregated")] = (
        "payload"
    )
    op: Annotated[
        Agg, Meta(description="the aggregate emitted: mean, min, max, sum, first, last, count")
    ] = "mean"
    size: Annotated[
        Annotated[int, Meta(ge=1)] | None,
        Meta(description="count window: emit every `size` messages (set size or seconds)"),
    ] = None
    seconds: Annotated[
        Annotated[float, Meta(gt=0)] | None,
        Meta(
            description="time window: emit every `seconds`, tumbling, on the loop's clock "
            "(set size or seconds)"
        ),
    ] = None
    persist: Annotated[
        bool, Meta(description="the open window survives restarts (node context)")
    ] = False

    def __post_init__(self) -> None:
        super().__post_init__()
        if (self.size is None) == (self.seconds is None):
            raise ValueError("set exactly one of size, seconds")


@register_node("WindowNode")
class WindowNode(_TimerNode[WindowParams]):
    """Aggregate a numeric property over count or time windows: mean/min/max/sum/last/count."""

    stateful: ClassVar[bool] = True

    def __init__(self, node_id: str, params: WindowParams, ctx: NodeContext) -> None:
        super().__init__(node_id, params, ctx)
        self._keys = split_path(params.property)
        self._size = params.size or 0
        self._timer: asyncio.TimerHandle | None = None
        self._reset()

    def _reset(self) -> None:
        self._n = 0
        self._sum = 0.0
        self._min = math.inf
        self._max = -math.inf
        self._first: Any = None
        self._last: Any = None
        self._topic = ""

    async def start(self) -> None:
        await super().start()
        if self.params.seconds is not None:
            self._timer = self._later(self.params.seconds, self._tick, self.params.seconds)

    async def stop(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _tick(self, seconds: float) -> None:
        self._timer = self._later(seconds, self._tick, seconds)
        if self._n:
            self.emit(self._result(), "out")

    def _result(self) -> Message:
        op = self.params.op
        n = self._n
        value: Any
        if op == "mean":
            value = self._sum / n
        elif op == "sum":
            value = self._sum
        elif op == "min":
            value = self._min
        elif op == "max":
            value = self._max
        elif op == "first":
            value = self._first
        elif op == "last":
            value = self._last
        else:
            value = n
        out = {"payload": value, "topic": self._topic, "ts": now(), "count": n}
        self._reset()
        return out

    def process(self, msg: Message) -> Result:
        v = get_path(msg, self._keys)
        if not isinstance(v, int | float) or isinstance(v, bool) or not isfinite(v):
            # a NaN or an infinity would poison the whole window (and its saved state)
            what = "a finite number" if isinstance(v, float) else "a number"
            raise ValueError(f"{self.params.property} is not {what}: {reprlib.repr(v)}")
        if self._n == 0:
            self._first = v
            self._topic = msg.get("topic", "")
        self._n += 1
        self._sum += v
        self._min = min(self._min, v)
        self._max = max(self._max, v)
        self._last = v
        if self._size and self._n >= self._size:
            return self._result()
        return None

    def get_state(self) -> Any:
        if not self._n:
            return None
        return {
            "n": self._n,
            # a sum can still overflow to inf: JSON would make it null and the restore
            # would drop the window, so non-finite floats are saved as text float() reads
            "sum": _json_number(self._sum),
            "min": _json_number(self._min),
            "max": _json_number(self._max),
            "first": _json_number(self._first),
            "last": _json_number(self._last),
            # the topic is any value a message carried: only text is kept
            "topic": self._topic if isinstance(self._topic, str) else "",
        }

    def set_state(self, state: Any) -> None:
        if not isinstance(state, dict):
            return
        try:
            self._n = int(state["n"])
            self._sum = float(state["sum"])
            self._min = float(state["min"])
            self._max = float(state["max"])
            self._first, self._last = _number(state["first"]), _number(state["last"])
            self._topic = str(state.get("topic", ""))
        except (KeyError, TypeError, ValueError):
            self._reset()


def _number(v: Any) -> int | float:
    """A saved ``first``/``last`` back as a number (``TypeError``/``ValueError`` if not one)."""
    if isinstance(v, bool) or not isinstance(v, int | float | str):
        raise TypeError(f"not a number: {reprlib.repr(v)}")
    return float(v) if isinstance(v, str) else v


def _json_number(v: Any) -> Any:
    """``v`` in a form JSON keeps exactly: a non-finite float as its text ("inf", "nan"),
    an int beyond 64 bits as a float; ``float()`` reads all of them back."""
    if isinstance(v, float):
        return v if isfinite(v) else str(v)
    if isinstance(v, int) and not -(2**63) <= v < 2**64:
        return float(v)
    return v


class DelayParams(NodeParams):
    seconds: Annotated[float, Meta(ge=0, description="how long each message is held")]
    max_pending: Annotated[
        int,
        Meta(ge=1, description="messages held at most; beyond it `overflow` applies (counted)"),
    ] = 10_000
    overflow: Annotated[
        Literal["drop_oldest", "drop_new"],
        Meta(description="which message is dropped when max_pending are held"),
    ] = "drop_new"


@register_node("DelayNode")
class DelayNode(_TimerNode[DelayParams]):
    """Hold every message for ``seconds``, then pass it on (order kept)."""

    def __init__(self, node_id: str, params: DelayParams, ctx: NodeContext) -> None:
        super().__init__(node_id, params, ctx)
        self._held: collections.deque[tuple[float, Message]] = collections.deque()
        self._timer: asyncio.TimerHandle | None = None

    def process(self, msg: Message) -> Result:
        if len(self._held) >= self.params.max_pending:
            self.stats.dropped += 1
            if self.params.overflow == "drop_new":
                return None
            self._held.popleft()
        self._held.append((time.monotonic() + self.params.seconds, msg))
        if self._timer is None:
            self._timer = self._later(self.params.seconds, self._release)
        return None

    def _release(self) -> None:
        self._timer = None
        t = time.monotonic()
        while self._held and self._held[0][0] <= t:
            self.emit(self._held.popleft()[1], "out")
        if self._held:
            self._timer = self._later(max(0.0, self._held[0][0] - t), self._release)

    async def stop(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        while self._held:  # flush early rather than lose held messages
            self.emit(self._held.popleft()[1], "out")

    def status(self) -> dict[str, Any] | None:
        return {"pending": len(self._held)}
