"""Shaping nodes Node-RED users reach for: ``RangeNode`` (scale, clamp, wrap, drop a number
into a range) and ``TriggerNode`` (send, wait, then send a second message; extend; reset).

Both are pure nodes; TriggerNode's later messages come from loop timers that die with it.
"""

from __future__ import annotations

import asyncio
import math
import reprlib
from typing import Annotated, Any, ClassVar, Literal

from msgspec import Meta

from mechaway.nodes.base import Message, Node, NodeParams, Result, get_path, split_path
from mechaway.nodes.context import NodeContext
from mechaway.nodes.registry import register_node


class RangeParams(NodeParams, kw_only=True):
    property: Annotated[
        str, Meta(description="the number to map: a dotted path into the message")
    ] = "payload"
    action: Annotated[
        Literal["scale", "clamp", "wrap", "drop"],
        Meta(
            description="scale: map linearly (values outside the input range land outside "
            "the output range); clamp: limit to the input range first; wrap: wrap around "
            "the input range first (Node-RED's roll); drop: drop messages outside it"
        ),
    ] = "scale"
    in_min: Annotated[float, Meta(description="the input range's low end")]
    in_max: Annotated[
        float, Meta(description="the input range's high end (must differ from in_min)")
    ]
    out_min: Annotated[float, Meta(description="what in_min maps to")]
    out_max: Annotated[float, Meta(description="what in_max maps to")]
    round: Annotated[
        bool, Meta(description="round the result to the nearest integer (halves up)")
    ] = False

    def __post_init__(self) -> None:
        for name in ("in_min", "in_max", "out_min", "out_max"):
            if not math.isfinite(getattr(self, name)):
                raise ValueError(f"{name} must be a finite number")
        if self.in_min == self.in_max:
            raise ValueError("in_min and in_max must differ")


@register_node("RangeNode")
class RangeNode(Node[RangeParams]):
    """Map a number from an input range to an output range (like Node-RED's range node).

    A missing property passes the message unchanged; a value that is not a number (or a
    numeric string) is an error (counted, to the ``error`` port).
    """

    def __init__(self, node_id: str, params: RangeParams, ctx: NodeContext) -> None:
        super().__init__(node_id, params, ctx)
        p: RangeParams = params
        self._keys = split_path(p.property)
        self._factor = (p.out_max - p.out_min) / (p.in_max - p.in_min)
        self._lo, self._hi = min(p.in_min, p.in_max), max(p.in_min, p.in_max)

    def process(self, msg: Message) -> Result:
        p: RangeParams = self.params
        missing = object()
        v = get_path(msg, self._keys, missing)
        if v is missing:
            return msg
        n = _number(v, p.property)
        if p.action == "drop" and not self._lo <= n <= self._hi:
            return None
        if p.action == "clamp":
            n = min(max(n, self._lo), self._hi)
        elif p.action == "wrap":
            span = self._hi - self._lo
            n = (n - self._lo) % span + self._lo
        out: float | int = (n - p.in_min) * self._factor + p.out_min
        if p.round:
            out = math.floor(out + 0.5)
        return _with(msg, self._keys, out)


def _number(v: Any, name: str) -> float:
    """``v`` as a finite float: numbers and numeric strings (what Node-RED's ``Number()``
    takes, minus the surprises: booleans and empty strings are not numbers)."""
    if isinstance(v, bool) or not isinstance(v, int | float | str):
        raise ValueError(f"{name} is not a number: {reprlib.repr(v)}")
    try:
        n = float(v)
    except (ValueError, OverflowError):
        raise ValueError(f"{name} is not a number: {reprlib.repr(v)}") from None
    if not math.isfinite(n):
        raise ValueError(f"{name} is not a finite number: {reprlib.repr(v)}")
    return n


def _with(msg: Message, keys: tuple[str | int, ...], value: Any) -> Message:
    """A copy of ``msg`` with ``value`` at ``keys`` (containers on the way copied)."""
    out = dict(msg)
    parent: Any = out
    for k in keys[:-1]:
        child = parent[k]
        if not isinstance(child, dict | list):
            raise ValueError(f"cannot set a value inside {type(child).__name__}")
        child = dict(child) if isinstance(child, dict) else list(child)
        parent[k] = child
        parent = child
    parent[keys[-1]] = value
    return out


class TriggerParams(NodeParams, kw_only=True):
    first: Annotated[
        Literal["message", "value", "nothing"],
        Meta(
            description="what to send at once when a message arms the trigger: the message "
            "itself, the message with payload first_value, or nothing"
        ),
    ] = "value"
    first_value: Annotated[
        Any, Meta(description="the payload sent first when first is value")
    ] = 1
    seconds: Annotated[
        float,
        Meta(
            ge=0,
            le=31 * 24 * 3600,
            description="how long to wait before the second message; 0: send none and stay "
            "armed (ignoring messages) until a reset",
        ),
    ] = 0.25
    then: Annotated[
        Literal["first_message", "latest_message", "value", "nothing"],
        Meta(
            description="the second message: the arming message, the arming message with "
            "the payload of the latest one received while armed, the arming message with "
            "payload second_value, or nothing"
        ),
    ] = "value"
    second_value: Annotated[
        Any, Meta(description="the payload sent second when then is value")
    ] = 0
    extend: Annotated[
        bool,
        Meta(description="a message received while armed restarts the wait"),
    ] = False
    repeat: Annotated[
        bool,
        Meta(
            description="instead of a second message, send the first one again every "
            "seconds until a reset (Node-RED's negative duration); needs seconds > 0"
        ),
    ] = False
    reset_payload: Annotated[
        Any,
        Meta(
            description="a message with this payload disarms the trigger (no second "
            "message); null: only a message with a reset key does"
        ),
    ] = None
    per_topic: Annotated[
        bool,
        Meta(description="arm one trigger per message topic instead of one for all"),
    ] = False
    max_topics: Annotated[
        int,
        Meta(
            ge=1,
            le=1_000_000,
            description="triggers armed at once, at most (per_topic); a new topic beyond it "
            "is dropped and counted",
        ),
    ] = 10_000
    second_port: Annotated[
        bool,
        Meta(description="send the second message on the port second instead of out"),
    ] = False

    def __post_init__(self) -> None:
        if self.repeat and self.seconds == 0:
            raise ValueError("repeat needs seconds > 0")
        if self.repeat and self.extend:
            raise ValueError("repeat and extend do not go together")


class _Armed:
    """One armed trigger (per topic, or the only one)."""

    __slots__ = ("first", "latest", "sent", "timer")

    def __init__(self, first: Message, sent: Message | None) -> None:
        self.first = first
        self.latest = first
        #: what went out first (re-sent by ``repeat``)
        self.sent = sent
        self.timer: asyncio.TimerHandle | None = None


@register_node("TriggerNode")
class TriggerNode(Node[TriggerParams]):
    """Send a message, wait, then send a second one (like Node-RED's trigger node).

    While armed, further messages are ignored (or extend the wait); a message with a
    ``reset`` key, or with payload ``reset_payload``, disarms it without a second message.
    A stopped node sends nothing more.
    """

    ports: ClassVar[tuple[str, ...]] = ("out",)

    @classmethod
    def output_ports(cls, params: TriggerParams) -> tuple[str, ...]:
        return ("out", "second") if params.second_port else ("out",)

    def __init__(self, node_id: str, params: TriggerParams, ctx: NodeContext) -> None:
        super().__init__(node_id, params, ctx)
        self._armed: dict[str, _Armed] = {}
        self._loop: asyncio.AbstractEventLoop | None = None
        self._port = "second" if params.second_port else "out"

    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()

    async def stop(self) -> None:
        for armed in self._armed.values():
            if armed.timer is not None:
                armed.timer.cancel()
        self._armed.clear()

    def _later(self, key: str) -> asyncio.TimerHandle:
        assert self._loop is not None, "node not started"
        fire = self._again if self.params.repeat else self._fire
        return self._loop.call_later(self.params.seconds, fire, key)

    def process(self, msg: Message) -> Result:
        p: TriggerParams = self.params
        topic = msg.get("topic", "") if p.per_topic else ""
        key = topic if isinstance(topic, str) else repr(topic)
        reset = p.reset_payload is not None and msg.get("payload") == p.reset_payload
        if reset or "reset" in msg:
            armed = self._armed.pop(key, None)
            if armed is not None and armed.timer is not None:
                armed.timer.cancel()
            return None
        armed = self._armed.get(key)
        if armed is not None:
            armed.latest = msg
            if p.extend and p.seconds > 0 and armed.timer is not None:
                armed.timer.cancel()
                armed.timer = self._later(key)
            return None
        if len(self._armed) >= p.max_topics:
            self.stats.dropped += 1
            return None
        sent: Message | None
        if p.first == "message":
            sent = msg
        elif p.first == "value":
            sent = {**msg, "payload": p.first_value}
        else:
            sent = None
        armed = self._armed[key] = _Armed(msg, sent)
        if p.seconds > 0:
            armed.timer = self._later(key)
        return sent

    def _fire(self, key: str) -> None:
        armed = self._armed.pop(key, None)
        if armed is None:
            return
        p: TriggerParams = self.params
        if p.then == "nothing":
            return
        if p.then == "first_message":
            out = armed.first
        elif p.then == "latest_message":
            out = {**armed.first, "payload": armed.latest.get("payload")}
        else:
            out = {**armed.first, "payload": p.second_value}
        self.emit(out, self._port)

    def _again(self, key: str) -> None:
        armed = self._armed.get(key)
        if armed is None:
            return
        armed.timer = self._later(key)
        if armed.sent is not None:
            self.emit(armed.sent, "out")

    def status(self) -> dict[str, Any] | None:
        return {"armed": len(self._armed)}
