"""``[gpio] backend = "sim"``: a gpiozero pin factory whose pins are the hardware
simulator's, over its local socket (``mechaway.drivers.simlink``).

The driver and gpiozero's devices use these pins exactly as lgpio's: functions, pulls,
levels, PWM frequency and duty, edge callbacks. An output's level and a PWM pin's duty go
to the simulator (which acts on its model: a fan pin cools the air); an input's level is
what the scenario drives (read on demand), and a watched input's changes arrive as
events, delivered on the link's reader thread, as lgpio delivers them on its own.

gpiozero is imported by this module: the backend seam (``backends.FACTORIES``) imports it
only when a ``sim`` factory is made.
"""

from __future__ import annotations

import time
from typing import Any

from gpiozero.exc import PinFixedPull, PinInvalidFunction, PinInvalidPull, PinSetInput
from gpiozero.pins.pi import PiFactory, PiPin

from mechaway.drivers.simlink import SimLink

#: the board the simulated header belongs to (a Pi 4 B: GPIO2/3 have fixed pull-ups)
SIM_REVISION = 0xC03111


class SimPin(PiPin):  # type: ignore[misc]  # gpiozero has no type hints
    """One BCM pin of the simulator."""

    def __init__(self, factory: SimFactory, info: Any) -> None:
        super().__init__(factory, info)
        self.bcm = int(info.name[4:])
        self._function = "input"
        self._pull = info.pull or "floating"
        self._state: float = 0
        self._frequency: float | None = None
        self._bounce: float | None = None
        self._edges = "both"
        self._watching = False
        self._state = self._setup("input", self._pull)

    @property
    def _link(self) -> SimLink:
        link: SimLink = self.factory.link
        return link

    def _setup(self, function: str, pull: str, state: float | None = None) -> int:
        level: int = self._link.call(
            "gpio.setup", pin=self.bcm, function=function, pull=pull, state=state
        )
        return level

    def close(self) -> None:
        self.when_changed = None
        if not self._link.closed:
            self._link.call("gpio.release", pin=self.bcm)
        self._function = "input"
        self._frequency = None

    # -- function and pull ------------------------------------------------------------
    def _get_function(self) -> str:
        return self._function

    def _set_function(self, value: str) -> None:
        if value not in ("input", "output"):
            raise PinInvalidFunction(f"{self!r}: function must be input or output")
        self._function = value
        self._state = self._setup(value, self._pull, 0 if value == "output" else None)

    def output_with_state(self, state: float) -> None:
        self._function = "output"
        self._state = self._setup("output", self._pull, 1 if state else 0)

    def _get_pull(self) -> str:
        return self._pull

    def _set_pull(self, value: str) -> None:
        if self._function != "input":
            raise PinFixedPull(f"cannot set pull on non-input pin {self!r}")
        if self.info.pull and value != self.info.pull:
            raise PinFixedPull(f"{self!r} has a fixed pull resistor")
        if value not in ("floating", "up", "down"):
            raise PinInvalidPull("pull must be floating, up, or down")
        self._pull = value
        self._state = self._setup("input", value)

    # -- level and PWM ----------------------------------------------------------------
    def _get_state(self) -> float:
        if self._function == "input":
            level: int = self._link.call("gpio.read", pin=self.bcm)
            self._state = level
        return self._state

    def _set_state(self, value: float) -> None:
        if self._function == "input":
            raise PinSetInput(f"cannot set state of pin {self!r}")
        value = float(value) if self._frequency is not None else (1 if value else 0)
        self._link.call("gpio.write", pin=self.bcm, value=value)
        self._state = value

    def _get_frequency(self) -> float | None:
        return self._frequency

    def _set_frequency(self, value: float | None) -> None:
        if value is None and self._link.closed:  # a device closed after its factory
            self._frequency, self._state = None, 0
            return
        if value is not None and self._function != "output":
            self._set_function("output")
        self._link.call("gpio.pwm", pin=self.bcm, frequency=value)
        self._frequency = value
        if value is None:
            self._state = 0

    # -- edges --------------------------------------------------------------------------
    def _get_bounce(self) -> float | None:
        return self._bounce

    def _set_bounce(self, value: float | None) -> None:
        self._bounce = None if value is None else float(value)

    def _get_edges(self) -> str:
        return self._edges

    def _set_edges(self, value: str) -> None:
        self._edges = value

    def _enable_event_detect(self) -> None:
        self._watching = True
        self._link.call("gpio.watch", pin=self.bcm, on=True)

    def _disable_event_detect(self) -> None:
        self._watching = False
        if not self._link.closed:
            self._link.call("gpio.watch", pin=self.bcm, on=False)

    def remote_change(self, level: int) -> None:
        """The simulator says this input's level changed (on the link's reader thread)."""
        if self._function != "input" or level == self._state:
            return
        self._state = level
        wanted = {"both": (0, 1), "rising": (1,), "falling": (0,)}.get(self._edges, ())
        if self._watching and level in wanted and self._when_changed is not None:
            self._call_when_changed(time.monotonic(), level)


class SimFactory(PiFactory):  # type: ignore[misc]  # gpiozero has no type hints
    """The simulator's GPIO header, as a gpiozero pin factory (one socket connection)."""

    def __init__(self, socket: str | None = None) -> None:
        super().__init__()
        self.pin_class = SimPin
        self.link = SimLink(socket, on_event=self._event)
        self.link.call("hello", client="gpio")

    def _get_revision(self) -> int:
        return SIM_REVISION

    def _event(self, event: dict[str, Any]) -> None:
        if event.get("ev") != "edge":
            return
        for pin in list(self.pins.values()):
            if pin.bcm == event.get("pin"):
                pin.remote_change(int(event.get("level", 0)))

    def close(self) -> None:
        try:
            super().close()
        finally:
            self.link.close()

    @staticmethod
    def ticks() -> float:
        return time.monotonic()

    @staticmethod
    def ticks_diff(later: float, earlier: float) -> float:
        return later - earlier
