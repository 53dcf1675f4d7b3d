"""The GPIO backend seam: ``[gpio] backend`` names a gpiozero pin factory maker.

Every backend is a gpiozero ``Factory``; the driver and its pins only use gpiozero's
public device and pin API on top of it, so a new backend is one more entry here (the
hardware simulator's ``sim``: a factory whose pins talk to the simulator over a local
socket). gpiozero is imported when a factory is made (the first GPIO node that starts),
never at import of this module.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from mechaway.errors import ConfigError


def _auto(chip: int | None) -> Any:
    """What gpiozero picks on this board (``GPIOZERO_PIN_FACTORY`` if set; else lgpio,
    RPi.GPIO, pigpio, native in that order)."""
    from gpiozero import Device

    if chip is not None:
        return _lgpio(chip)
    Device.ensure_pin_factory()
    return Device.pin_factory


def _lgpio(chip: int | None) -> Any:
    """lgpio over ``/dev/gpiochipN``: what works on a Pi 5 (RPi.GPIO does not)."""
    from gpiozero.pins.lgpio import LGPIOFactory

    return LGPIOFactory(chip=chip)


def _mock(chip: int | None) -> Any:
    """gpiozero's MockFactory with PWM-capable mock pins (each records its history)."""
    from gpiozero.pins.mock import MockFactory, MockPWMPin

    return MockFactory(pin_class=MockPWMPin)


def _sim(chip: int | None, socket: str | None = None) -> Any:
    """The hardware simulator's header, over its socket (``mechaway.drivers.gpio.sim``)."""
    from mechaway.drivers.gpio.sim import SimFactory

    return SimFactory(socket)


#: backend name -> maker of a gpiozero pin factory (``chip``: the lgpio gpiochip or None)
FACTORIES: dict[str, Callable[[int | None], Any]] = {
    "auto": _auto,
    "lgpio": _lgpio,
    "mock": _mock,
    "sim": _sim,
}


def make_factory(backend: str, chip: int | None = None, sim_socket: str | None = None) -> Any:
    """A gpiozero pin factory for ``backend``; ``ConfigError`` saying why when the board
    has none (no GPIO here, lgpio not installed, no access to /dev/gpiochip*)."""
    maker = FACTORIES.get(backend)
    if maker is None:
        raise ConfigError(f"[gpio] backend {backend!r}: known: {', '.join(FACTORIES)}")
    try:
        return _sim(chip, sim_socket) if maker is _sim else maker(chip)
    except ImportError as err:
        raise ConfigError(
            f"[gpio] backend {backend!r}: {err} (install the 'hardware' extra; lgpio "
            f"comes with python3-lgpio on Raspberry Pi OS)"
        ) from err
    except Exception as err:  # gpiozero's BadPinFactory, lgpio's error, OSError
        raise ConfigError(
            f"[gpio] backend {backend!r} found no GPIO: {type(err).__name__}: {err} "
            f'(on a machine without GPIO, set [gpio] backend = "mock")'
        ) from err
