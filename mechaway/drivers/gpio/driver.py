"""The ``[gpio]`` driver: one pin factory, pins claimed by nodes, edges bridged into the loop.

A node opens a pin through the driver (``open_input``, ``open_output``, ``open_pwm``) and
holds it until it closes the handle. A pin has one owner: a claim from another flow fails
with ``PinClaimed`` naming both nodes. A claim from the same flow is the node a hot swap
replaces it with (a flow validates one owner per pin): it waits and takes the pin over
when the old node releases it, a few milliseconds later, or never if the deploy is rolled
back.

Everything here runs on the event loop thread except gpiozero's callbacks, which run on
gpiozero's (or lgpio's) threads and enter the loop only through the driver's
``ThreadBridge``. Bounce filtering is done here, on the loop, the same on every backend
(gpiozero's mock pins do not implement bounce, and lgpio's differs from RPi.GPIO's).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Annotated, Any, ClassVar, Literal

import msgspec

from mechaway.drivers.base import Driver, DriverEnv, DriverSettings, ThreadBridge, register_driver
from mechaway.drivers.gpio.backends import make_factory
from mechaway.errors import ConfigError, MechawayError, NotConnected

#: the BCM numbers of the 40-pin header every Raspberry Pi has
HEADER_MAX_PIN = 27


class GpioSettings(DriverSettings):
    """The ``[gpio]`` section (one per daemon: the board's own pins)."""

    backend: Annotated[
        Literal["auto", "lgpio", "mock", "sim"],
        msgspec.Meta(
            description="gpiozero pin factory: auto (what gpiozero picks on the board, "
            "GPIOZERO_PIN_FACTORY if set), lgpio (what works on a Pi 5), mock "
            "(gpiozero's MockFactory with PWM pins, for tests and machines without GPIO), "
            "or sim (the hardware simulator's pins, over sim_socket)"
        ),
    ] = "auto"
    sim_socket: Annotated[
        str | None,
        msgspec.Meta(
            description="backend sim: the simulator's socket (default: "
            "$XDG_RUNTIME_DIR/mechaway-sim/sim.sock, else /tmp/mechaway-sim-UID/sim.sock)"
        ),
    ] = None
    chip: Annotated[
        Annotated[int, msgspec.Meta(ge=0, le=64)] | None,
        msgspec.Meta(
            description="lgpio's /dev/gpiochipN (default: gpiozero's choice, 0, or 4 on a "
            "Pi 5 with an older kernel)",
        ),
    ] = None
    max_pin: Annotated[
        int,
        msgspec.Meta(
            ge=0,
            le=53,
            description="highest BCM number a node may claim: 27 (the 40-pin header) by "
            "default; up to 45 on a Compute Module",
        ),
    ] = HEADER_MAX_PIN


class GpioError(MechawayError):
    """A pin could not be opened or used."""


class PinClaimed(GpioError):
    """A node asked for a pin another flow's node holds."""


@dataclass(frozen=True, slots=True)
class PinOwner:
    """Who holds a pin: shown in errors and in the driver's status."""

    flow: str
    node: str
    type_name: str = ""

    def __str__(self) -> str:
        kind = f" ({self.type_name})" if self.type_name else ""
        return f"flow {self.flow!r} node {self.node!r}{kind}"


class PinHandle:
    """A node's hold on one pin: active once its gpiozero device is open; before that
    (a hot swap's new node, while the old one still holds the pin) it waits."""

    mode: ClassVar[str] = ""

    def __init__(self, driver: GpioDriver, pin: int, owner: PinOwner) -> None:
        self.driver = driver
        self.pin = pin
        self.owner = owner
        self.device: Any = None
        self.error: str | None = None
        self.closed = False
        self._ready = asyncio.Event()

    @property
    def active(self) -> bool:
        return self.device is not None

    async def wait_ready(self, timeout: float = 2.0) -> None:
        """Return once the pin is this handle's; ``NotConnected`` if it is not in time or
        could not be opened (a write is then refused, never kept for later)."""
        if self.device is None and self.error is None and not self.closed:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._ready.wait(), timeout)
        if self.device is None:
            why = self.error or f"still held by {self.driver.holder(self.pin)}"
            raise NotConnected(f"GPIO pin {self.pin}: {why}")

    def close(self) -> None:
        """Give the pin back (idempotent); the next claimant of the same flow gets it."""
        if not self.closed:
            self.closed = True
            self.driver.release(self)

    # -- for the driver -----------------------------------------------------------------
    def open(self, factory: Any) -> None:
        self.device = self._make(factory)
        self._ready.set()

    def fail(self, error: str) -> None:
        self.error = error
        self._ready.set()

    def shut(self) -> None:
        device, self.device = self.device, None
        if device is not None:
            device.close()

    def _make(self, factory: Any) -> Any:
        raise NotImplementedError


Edge = Literal["rising", "falling", "both", "none"]
Pull = Literal["up", "down", "none"]


class InputPin(PinHandle):
    """An input: level changes reach ``on_level(level, ts)`` on the loop, debounced and
    filtered by ``edge``; ``level()`` reads the pin now."""

    mode: ClassVar[str] = "input"

    def __init__(
        self,
        driver: GpioDriver,
        pin: int,
        owner: PinOwner,
        *,
        pull: Pull,
        edge: Edge,
        bounce_s: float,
        on_level: Callable[[int, float], None] | None,
        bridge: ThreadBridge,
    ) -> None:
        super().__init__(driver, pin, owner)
        self.pull = pull
        self.bounce_s = bounce_s
        self.on_level = on_level
        self._want = {"rising": (1,), "falling": (0,), "both": (0, 1), "none": ()}[edge]
        self._post = bridge.call
        #: the last level accepted (reported or not, by the edge filter)
        self._level = 0
        self._accepted_at = -1e18
        self._settle: asyncio.TimerHandle | None = None
        self.edges = 0
        self.bounced = 0

    def _make(self, factory: Any) -> Any:
        from gpiozero import InputDevice

        pull_up = {"up": True, "down": False, "none": None}[self.pull]
        device = InputDevice(
            self.pin,
            pull_up=pull_up,
            active_state=True if pull_up is None else None,
            pin_factory=factory,
        )
        self._level = int(device.pin.state)
        if self.on_level is not None:
            device.pin.edges = "both"  # both, always: the level must be tracked
            # gpiozero keeps a weak reference: the bound method lives as long as self
            device.pin.when_changed = self._changed
        return device

    def level(self) -> int:
        """The pin's level now (0 or 1)."""
        if self.device is None:
            raise NotConnected(f"GPIO pin {self.pin}: not open")
        return int(self.device.pin.state)

    def _changed(self, ticks: Any, state: Any) -> None:
        """gpiozero's callback, on its thread: stamp it, post it to the loop, nothing else."""
        self._post(self._edge, int(state), time.monotonic(), time.time())

    def _edge(self, level: int, mono: float, wall: float) -> None:
        """On the loop: one level change seen by the backend."""
        if self.closed or self.device is None:
            return
        self.edges += 1
        if self.bounce_s and mono - self._accepted_at < self.bounce_s:
            # inside the lock-out after an accepted edge: look again when it ends
            self.bounced += 1
            if self._settle is None:
                delay = self._accepted_at + self.bounce_s - time.monotonic()
                self._settle = asyncio.get_running_loop().call_later(
                    max(0.0, delay), self._settled
                )
            return
        if level != self._level:  # else the echo of a change already reported
            self._accept(level, mono, wall)

    def _settled(self) -> None:
        """End of a lock-out: if the pin ended elsewhere than the last accepted level,
        that is a real change (a short pulse, or bounces that ended the other way)."""
        self._settle = None
        if self.closed or self.device is None:
            return
        level = int(self.device.pin.state)
        if level != self._level:
            self._accept(level, time.monotonic(), time.time())

    def _accept(self, level: int, mono: float, wall: float) -> None:
        self._level = level
        self._accepted_at = mono
        if level in self._want and self.on_level is not None:
            self.on_level(level, wall)

    def shut(self) -> None:
        if self._settle is not None:
            self._settle.cancel()
            self._settle = None
        super().shut()


class OutputPin(PinHandle):
    """A digital output: ``set(on)``, ``toggle()``, ``blink(on_s, off_s, n)``."""

    mode: ClassVar[str] = "output"

    def __init__(
        self,
        driver: GpioDriver,
        pin: int,
        owner: PinOwner,
        *,
        active_high: bool,
        initial: bool | None,
    ) -> None:
        super().__init__(driver, pin, owner)
        self.active_high = active_high
        self.initial = initial

    def _make(self, factory: Any) -> Any:
        from gpiozero import DigitalOutputDevice

        return DigitalOutputDevice(
            self.pin, active_high=self.active_high, initial_value=self.initial,
            pin_factory=factory,
        )  # fmt: skip

    def set(self, on: bool) -> None:
        """Switch on or off (stops a blink in progress)."""
        if on:
            self.device.on()
        else:
            self.device.off()

    def toggle(self) -> None:
        self.device.toggle()

    def blink(self, on_s: float, off_s: float, n: int | None) -> None:
        """Blink on gpiozero's thread (``n`` times, or until the next command); ends off."""
        self.device.blink(on_time=on_s, off_time=off_s, n=n, background=True)

    @property
    def is_on(self) -> bool:
        return bool(self.device.is_active)


class PwmPin(PinHandle):
    """A PWM output: ``duty(0..1)`` at ``frequency`` Hz."""

    mode: ClassVar[str] = "pwm"

    def __init__(
        self,
        driver: GpioDriver,
        pin: int,
        owner: PinOwner,
        *,
        frequency: float,
        active_high: bool,
        initial: float,
    ) -> None:
        super().__init__(driver, pin, owner)
        self.frequency = frequency
        self.active_high = active_high
        self.initial = initial

    def _make(self, factory: Any) -> Any:
        from gpiozero import PWMOutputDevice

        return PWMOutputDevice(
            self.pin, active_high=self.active_high, initial_value=self.initial,
            frequency=self.frequency, pin_factory=factory,
        )  # fmt: skip

    def duty(self, value: float) -> None:
        self.device.value = value


@register_driver("gpio")
class GpioDriver(Driver[GpioSettings]):
    """The board's GPIO pins through one gpiozero pin factory (made on the first pin)."""

    Settings = GpioSettings
    named = False

    def __init__(self, name: str, settings: GpioSettings, env: DriverEnv | None = None) -> None:
        super().__init__(name, settings, env)
        self.health.counters.update(dict.fromkeys(("pins_opened", "open_failures", "refused"), 0))
        self.factory: Any = None
        self._claims: dict[int, list[PinHandle]] = {}
        self._bridge: ThreadBridge | None = None

    async def start(self) -> None:
        """Ready: the pin factory is made when the first pin opens (gpiozero loads then)."""
        self._bridge = ThreadBridge()
        self.health.set("connected")

    async def close(self, timeout: float = 5.0) -> None:
        for handles in list(self._claims.values()):
            for h in handles:
                h.closed = True
                self._shut(h)
        self._claims.clear()
        factory, self.factory = self.factory, None
        if factory is not None:
            try:
                factory.close()
            except Exception as err:  # a backend's close failing must not stop the daemon's
                self.log.warning("gpio: closing the pin factory failed: %r", err)
        self.health.set("closed")

    # -- pins ---------------------------------------------------------------------------
    def open_input(
        self,
        pin: int,
        owner: PinOwner,
        *,
        pull: Pull = "down",
        edge: Edge = "both",
        bounce_s: float = 0.0,
        on_level: Callable[[int, float], None] | None = None,
    ) -> InputPin:
        """Claim ``pin`` as an input; ``on_level(level, ts)`` runs on the loop."""
        assert self._bridge is not None, "the driver is not started"
        handle = InputPin(
            self, pin, owner, pull=pull, edge=edge, bounce_s=bounce_s, on_level=on_level,
            bridge=self._bridge,
        )  # fmt: skip
        self._claim(handle)
        return handle

    def open_output(
        self, pin: int, owner: PinOwner, *, active_high: bool = True, initial: bool | None = False
    ) -> OutputPin:
        handle = OutputPin(self, pin, owner, active_high=active_high, initial=initial)
        self._claim(handle)
        return handle

    def open_pwm(
        self,
        pin: int,
        owner: PinOwner,
        *,
        frequency: float = 100.0,
        active_high: bool = True,
        initial: float = 0.0,
    ) -> PwmPin:
        handle = PwmPin(
            self, pin, owner, frequency=frequency, active_high=active_high, initial=initial
        )
        self._claim(handle)
        return handle

    def holder(self, pin: int) -> str:
        """Who holds ``pin`` now (for messages)."""
        holders = self._claims.get(pin)
        return str(holders[0].owner) if holders else "nobody"

    def _claim(self, handle: PinHandle) -> None:
        pin = handle.pin
        if not 0 <= pin <= self.settings.max_pin:
            self.health.count("refused")
            raise GpioError(
                f"GPIO pin {pin}: outside BCM 0..{self.settings.max_pin} ([gpio] max_pin; "
                f"27 is the 40-pin header's last)"
            )
        holders = self._claims.get(pin, [])
        foreign = [h for h in holders if h.owner.flow != handle.owner.flow]
        if foreign:
            self.health.count("refused")
            raise PinClaimed(
                f"GPIO pin {pin} is claimed by {foreign[0].owner}; {handle.owner} cannot "
                f"claim it too (a pin has one owner)"
            )
        holders.append(handle)
        self._claims[pin] = holders
        if len(holders) == 1:
            try:
                self._open(handle)
            except Exception:
                holders.remove(handle)
                if not holders:
                    del self._claims[pin]
                raise

    def _open(self, handle: PinHandle) -> None:
        if self.factory is None:
            try:
                self.factory = make_factory(
                    self.settings.backend, self.settings.chip, self.settings.sim_socket
                )
            except ConfigError as err:
                self.health.set("failed", str(err))
                raise
            self.health.set("connected")
        try:
            handle.open(self.factory)
        except Exception as err:
            self.health.count("open_failures")
            text = f"GPIO pin {handle.pin} ({handle.mode}): {type(err).__name__}: {err}"
            handle.fail(text)
            self.health.last_error = text
            raise GpioError(text) from err
        self.health.count("pins_opened")

    def release(self, handle: PinHandle) -> None:
        """``handle`` is done with its pin: close its device; the next claimant opens."""
        holders = self._claims.get(handle.pin)
        if holders is None or handle not in holders:
            return
        was_active = holders[0] is handle
        holders.remove(handle)
        self._shut(handle)
        if not holders:
            del self._claims[handle.pin]
        elif was_active:
            nxt = holders[0]
            try:
                self._open(nxt)
            except GpioError as err:  # said in the handle (its writes fail) and the status
                self.log.warning("%s: %s", nxt.owner, err)

    def _shut(self, handle: PinHandle) -> None:
        try:
            handle.shut()
        except Exception as err:
            self.log.warning("GPIO pin %d: closing failed: %r", handle.pin, err)

    def extra_status(self) -> dict[str, Any]:
        pins = {}
        for pin, holders in sorted(self._claims.items()):
            head = holders[0]
            entry: dict[str, Any] = {"mode": head.mode, "owner": str(head.owner),
                                     "open": head.active}  # fmt: skip
            if isinstance(head, InputPin):
                entry.update(edges=head.edges, bounced=head.bounced)
            if len(holders) > 1:
                entry["waiting"] = [str(h.owner) for h in holders[1:]]
            pins[str(pin)] = entry
        return {"backend": self.settings.backend, "pins": pins}
