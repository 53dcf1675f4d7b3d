"""GPIO nodes: ``GPIOInNode`` (edges or periodic levels), ``GPIOOutNode`` and ``PWMOutNode``.

Each node claims its pin from the ``[gpio]`` driver when it starts and gives it back when
it stops; a pin has one owner (two nodes of one flow naming the same pin fail validation,
a node of another flow fails at deploy). Edges come from gpiozero's threads through the
driver's one bridge into the loop; the nodes never see a foreign thread. Outputs act on
the message being written and never later: a command refused while the pin is not open is
counted and dropped, not replayed.
"""

from __future__ import annotations

import asyncio
import math
from typing import Annotated, Any, ClassVar, Literal

import msgspec
from msgspec import Meta

from mechaway.drivers.gpio import GpioDriver, InputPin, OutputPin, PinOwner, PwmPin
from mechaway.nodes.base import Message, NodeParams, Result, SinkNode, SinkParams, SourceNode, now
from mechaway.nodes.context import NodeContext
from mechaway.nodes.registry import register_node
from mechaway.tasks import OwnedTask

_PIN = Meta(
    ge=0,
    le=53,
    description="BCM GPIO number; the driver accepts 0..27 (the 40-pin header) unless "
    "[gpio] max_pin says more",
)
_ACTIVE_HIGH = Meta(description="true: on drives the pin high; false: on drives it low")


def _claims(pin: int) -> tuple[str, ...]:
    return (f"GPIO pin {pin}",)


def _owner(node: Any) -> PinOwner:
    return PinOwner(node.ctx.flow_id, node.id, node.type_name)


# ------------------------------------------------------------------------------------------
# GPIOInNode
# ------------------------------------------------------------------------------------------
class GPIOInParams(NodeParams):
    pin: Annotated[int, _PIN]
    pull: Annotated[
        Literal["up", "down", "none"],
        Meta(
            description="internal resistor: up (a switch to ground), down (gpiozero's "
            "default), none (the circuit has its own)"
        ),
    ] = "down"
    bounce_ms: Annotated[
        float,
        Meta(
            ge=0,
            le=10_000,
            description="ignore changes for this long after an accepted one, then report "
            "the level the pin settled at if it differs (0: off; 20-50 for a switch)",
        ),
    ] = 0.0
    edge: Annotated[
        Literal["rising", "falling", "both", "none"],
        Meta(
            description="which changes send a message: rising (0 -> 1), falling (1 -> 0), "
            "both, or none (with interval: levels only)"
        ),
    ] = "both"
    interval: Annotated[
        Annotated[float, Meta(gt=0, le=86_400)] | None,
        Meta(description="also send the level every this many seconds (null: changes only)"),
    ] = None

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.edge == "none" and self.interval is None:
            raise ValueError("edge none needs an interval (else nothing is ever sent)")


@register_node("GPIOInNode")
class GPIOInNode(SourceNode[GPIOInParams]):
    """Emit ``{payload: 0|1, pin, topic: "gpio/PIN", ts}`` on each (debounced) change, and
    every ``interval`` seconds if set. ``ts`` is when the backend saw the change."""

    ports: ClassVar[tuple[str, ...]] = ("out",)

    @classmethod
    def claims(cls, params: GPIOInParams) -> tuple[str, ...]:
        return _claims(params.pin)

    def __init__(self, node_id: str, params: GPIOInParams, ctx: NodeContext) -> None:
        super().__init__(node_id, params, ctx)
        self.topic = f"gpio/{params.pin}"
        self.handle: InputPin | None = None
        self._task = OwnedTask(f"mechaway.gpio_in[{ctx.flow_id}.{node_id}]")

    async def start(self) -> None:
        p = self.params
        drv = await self.ctx.services.connection(GpioDriver)
        self.handle = drv.open_input(
            p.pin, _owner(self), pull=p.pull, edge=p.edge, bounce_s=p.bounce_ms / 1000.0,
            on_level=None if p.edge == "none" else self._on_level,
        )  # fmt: skip
        if p.interval is not None:
            self._task.start(self._poll)

    async def stop(self) -> None:
        await self._task.stop()
        if self.handle is not None:
            self.handle.close()

    def _on_level(self, level: int, ts: float) -> None:
        self.emit({"payload": level, "pin": self.params.pin, "topic": self.topic, "ts": ts})

    async def _poll(self) -> None:
        assert self.params.interval is not None and self.handle is not None
        handle = self.handle
        while True:
            await self.room()
            if handle.active:
                self._on_level(handle.level(), now())
            await asyncio.sleep(self.params.interval)

    def status(self) -> dict[str, Any] | None:
        h = self.handle
        if h is None:
            return None
        return {"pin": h.pin, "open": h.active, "edges": h.edges, "bounced": h.bounced}


# ------------------------------------------------------------------------------------------
# GPIOOutNode
# ------------------------------------------------------------------------------------------
class Blink(msgspec.Struct, forbid_unknown_fields=True):
    """``{"blink": {"on": s, "off": s, "n": count}}``."""

    on: Annotated[float, Meta(gt=0, le=86_400, description="seconds on")]
    off: Annotated[float, Meta(gt=0, le=86_400, description="seconds off")]
    n: Annotated[
        Annotated[int, Meta(ge=1)] | None,
        Meta(description="times to blink, then off (null: until the next command)"),
    ] = None


class _BlinkCommand(msgspec.Struct, forbid_unknown_fields=True):
    blink: Blink


class GPIOOutParams(SinkParams, kw_only=True):
    pin: Annotated[int, _PIN]
    active_high: Annotated[bool, _ACTIVE_HIGH] = True
    initial: Annotated[
        bool | None,
        Meta(description="state when the node starts: false (off), true (on), or null "
             "(leave the pin as found)"),
    ] = False  # fmt: skip


def parse_command(payload: Any) -> bool | str | Blink:
    """A GPIOOutNode payload -> True/False, ``"toggle"`` or a ``Blink``; ``ValueError``
    saying what was wrong (the message goes to the error port)."""
    if payload is True or payload is False:
        return payload
    if type(payload) is int and payload in (0, 1):
        return bool(payload)
    if payload == "toggle":
        return "toggle"
    if isinstance(payload, dict) and "blink" in payload:
        try:
            return msgspec.convert(payload, _BlinkCommand).blink
        except msgspec.ValidationError as err:
            raise ValueError(f"payload: {str(err).replace('$.', '')}") from None
    raise ValueError(
        'payload must be true, false, 0, 1, "toggle" or {"blink": {"on": s, "off": s, '
        f'"n": count}}}}, got {payload!r:.60}'
    )


@register_node("GPIOOutNode")
class GPIOOutNode(SinkNode[GPIOOutParams]):
    """Drive a pin: ``true``/``false`` (or 1/0), ``"toggle"``, or ``{"blink": {"on": s,
    "off": s, "n": count}}``; anything else goes to the error port, counted."""

    @classmethod
    def claims(cls, params: GPIOOutParams) -> tuple[str, ...]:
        return _claims(params.pin)

    def __init__(self, node_id: str, params: GPIOOutParams, ctx: NodeContext) -> None:
        super().__init__(node_id, params, ctx)
        self.handle: OutputPin | None = None
        self.bad_commands = 0
        self.refused = 0

    async def start(self) -> None:
        drv = await self.ctx.services.connection(GpioDriver)
        p = self.params
        self.handle = drv.open_output(
            p.pin, _owner(self), active_high=p.active_high, initial=p.initial
        )

    async def stop(self) -> None:
        if self.handle is not None:
            self.handle.close()

    async def write(self, msg: Message) -> Result:
        try:
            cmd = parse_command(msg.get("payload"))
        except ValueError:
            self.bad_commands += 1
            raise
        handle = self.handle
        assert handle is not None
        if not handle.active:
            try:
                await handle.wait_ready()
            except Exception:
                self.refused += 1
                raise
        if cmd == "toggle":
            handle.toggle()
        elif isinstance(cmd, Blink):
            handle.blink(cmd.on, cmd.off, cmd.n)
        else:
            handle.set(bool(cmd))
        return None

    def status(self) -> dict[str, Any] | None:
        h = self.handle
        return {
            "pin": self.params.pin,
            "open": bool(h and h.active),
            "on": bool(h and h.active and h.is_on),
            "bad_commands": self.bad_commands,
            "refused": self.refused,
        }


# ------------------------------------------------------------------------------------------
# PWMOutNode
# ------------------------------------------------------------------------------------------
class PWMOutParams(SinkParams, kw_only=True):
    pin: Annotated[int, _PIN]
    frequency: Annotated[
        float, Meta(gt=0, le=100_000, description="PWM frequency, Hz (software PWM on lgpio)")
    ] = 100.0
    active_high: Annotated[bool, _ACTIVE_HIGH] = True
    initial: Annotated[
        float, Meta(ge=0, le=1, description="duty cycle when the node starts, 0..1")
    ] = 0.0


@register_node("PWMOutNode")
class PWMOutNode(SinkNode[PWMOutParams]):
    """Set a pin's PWM duty cycle from the payload, a number 0..1; anything else (out of
    range, not a number) goes to the error port and is counted (``out_of_range``)."""

    @classmethod
    def claims(cls, params: PWMOutParams) -> tuple[str, ...]:
        return _claims(params.pin)

    def __init__(self, node_id: str, params: PWMOutParams, ctx: NodeContext) -> None:
        super().__init__(node_id, params, ctx)
        self.handle: PwmPin | None = None
        self.out_of_range = 0
        self.refused = 0

    async def start(self) -> None:
        drv = await self.ctx.services.connection(GpioDriver)
        p = self.params
        self.handle = drv.open_pwm(
            p.pin, _owner(self), frequency=p.frequency, active_high=p.active_high,
            initial=p.initial,
        )  # fmt: skip

    async def stop(self) -> None:
        if self.handle is not None:
            self.handle.close()

    async def write(self, msg: Message) -> Result:
        v: Any = msg.get("payload")
        if type(v) not in (int, float) or not math.isfinite(v) or not 0 <= v <= 1:
            self.out_of_range += 1
            raise ValueError(f"payload must be a duty cycle 0..1, got {v!r:.60}")
        handle = self.handle
        assert handle is not None
        if not handle.active:
            try:
                await handle.wait_ready()
            except Exception:
                self.refused += 1
                raise
        handle.duty(float(v))
        return None

    def status(self) -> dict[str, Any] | None:
        h = self.handle
        return {
            "pin": self.params.pin,
            "open": bool(h and h.active),
            "out_of_range": self.out_of_range,
            "refused": self.refused,
        }
