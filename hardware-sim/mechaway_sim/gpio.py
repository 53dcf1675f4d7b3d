"""Simulated GPIO header: pins a client sets up as inputs or outputs, levels, pulls, PWM.

An input pin reads what the scenario drives on it (its schedule), else its pull (up: 1,
down or floating: 0). An output's level and a PWM pin's duty are observed: a pin wired to
an actuator changes the model (``World.actuate``). Changes of a driven input are sent to
every connection that watches the pin (``watchers``), as edge events.
"""

from __future__ import annotations

import errno
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from mechaway_sim.scenario import Scenario
from mechaway_sim.world import World

Notify = Callable[[dict[str, Any]], None]


@dataclass
class Pin:
    bcm: int
    name: str = ""
    function: str = "input"
    pull: str = "floating"
    #: the level an output drives (0/1), or a PWM pin's duty (0..1)
    value: float = 0.0
    frequency: float | None = None
    #: the level the scenario drives on an input (None: nothing drives it)
    driven: int | None = None
    owner: object | None = None
    watchers: set[Any] = field(default_factory=set)
    writes: int = 0
    toggles: int = 0

    def level(self) -> int:
        if self.function == "input":
            if self.driven is not None:
                return self.driven
            return 1 if self.pull == "up" else 0
        return 1 if self.value >= 0.5 else 0


class Header:
    """The simulated header (BCM 0..53)."""

    def __init__(self, world: World, sc: Scenario) -> None:
        self.world = world
        self.pins: dict[int, Pin] = {}
        #: pin -> actuator name
        self.wired: dict[int, str] = {}
        for p in sc.gpio:
            pin = self.pin(p.pin)
            pin.name = p.name
            if p.mode == "input":
                pin.driven = p.initial if p.schedule or p.initial else None
        for a in sc.actuators:
            kind, _server, _unit, num = a.source()
            if kind in ("gpio", "pwm"):
                self.wired[num] = a.name

    def pin(self, bcm: int) -> Pin:
        if not 0 <= bcm <= 53:
            raise OSError(errno.EINVAL, f"GPIO{bcm}: no such pin")
        pin = self.pins.get(bcm)
        if pin is None:
            pin = self.pins[bcm] = Pin(bcm)
        return pin

    # -- what clients do ------------------------------------------------------------------
    def setup(self, bcm: int, function: str, pull: str, state: float | None, who: object) -> int:
        if function not in ("input", "output"):
            raise OSError(errno.EINVAL, f"GPIO{bcm}: function {function!r}")
        if pull not in ("up", "down", "floating"):
            raise OSError(errno.EINVAL, f"GPIO{bcm}: pull {pull!r}")
        pin = self.pin(bcm)
        if pin.owner is not None and pin.owner is not who:
            raise OSError(errno.EBUSY, f"GPIO{bcm} is in use by another client")
        pin.owner = who
        pin.function, pin.pull = function, pull
        if function == "output":
            self._set(pin, float(state or 0), f"gpio {bcm} setup")
        else:
            pin.frequency = None
            self._observe(pin, "setup as input")
        return pin.level()

    def write(self, bcm: int, value: float, who: object) -> None:
        pin = self._owned(bcm, who)
        if pin.function != "output":
            raise OSError(errno.EPERM, f"GPIO{bcm} is an input")
        if not 0.0 <= value <= 1.0:
            raise OSError(errno.EINVAL, f"GPIO{bcm}: value {value} is outside 0..1")
        pin.writes += 1
        self._set(pin, value if pin.frequency is not None else float(value >= 0.5),
                  f"gpio {bcm} write")  # fmt: skip

    def read(self, bcm: int) -> int:
        return self.pin(bcm).level()

    def pwm(self, bcm: int, frequency: float | None, who: object) -> None:
        pin = self._owned(bcm, who)
        if frequency is not None and pin.function != "output":
            raise OSError(errno.EPERM, f"GPIO{bcm}: PWM needs an output")
        pin.frequency = frequency
        if frequency is None:
            self._set(pin, 0.0, f"gpio {bcm} pwm off")

    def release(self, bcm: int, who: object) -> None:
        pin = self.pin(bcm)
        pin.watchers.discard(who)
        if pin.owner is who:
            pin.owner = None
            pin.function, pin.frequency = "input", None
            self._observe(pin, "released")

    def watch(self, bcm: int, on: bool, who: Any) -> None:
        pin = self.pin(bcm)
        if on:
            pin.watchers.add(who)
        else:
            pin.watchers.discard(who)

    def forget(self, who: object) -> None:
        """A client went away: its pins are released (a process exit frees its lines)."""
        for pin in self.pins.values():
            if pin.owner is who or who in pin.watchers:
                self.release(pin.bcm, who)

    # -- the scenario's side ----------------------------------------------------------------
    def drive(self, bcm: int, level: int) -> None:
        """The scenario drives an input to ``level``; watchers hear the edge."""
        pin = self.pin(bcm)
        before = pin.level()
        pin.driven = level
        if pin.function == "input" and pin.level() != before:
            pin.toggles += 1
            self.world.emit({"event": "input", "pin": bcm, "name": pin.name, "level": level})
            event = {"ev": "edge", "pin": bcm, "level": pin.level()}
            for watcher in list(pin.watchers):
                watcher.event(event)

    # -- inside -----------------------------------------------------------------------------
    def _owned(self, bcm: int, who: object) -> Pin:
        pin = self.pin(bcm)
        if pin.owner is not who:
            raise OSError(errno.EPERM, f"GPIO{bcm} is not set up by this client")
        return pin

    def _set(self, pin: Pin, value: float, why: str) -> None:
        if pin.level() != (1 if value >= 0.5 else 0):
            pin.toggles += 1
        pin.value = value
        self._observe(pin, why)

    def _observe(self, pin: Pin, why: str) -> None:
        name = self.wired.get(pin.bcm)
        if name is None:
            return
        if pin.function != "output":
            level = 0.0
        elif pin.frequency is not None:
            level = pin.value
        else:
            level = float(pin.level())
        self.world.actuate(name, level, why)
