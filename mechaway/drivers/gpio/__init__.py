"""GPIO driver: the ``[gpio]`` section, pins claimed by nodes, gpiozero behind a factory
seam (``backends``). Importing this package imports no gpiozero."""

from mechaway.drivers.gpio.driver import (
    GpioDriver,
    GpioError,
    GpioSettings,
    InputPin,
    OutputPin,
    PinClaimed,
    PinOwner,
    PwmPin,
)

__all__ = [
    "GpioDriver",
    "GpioError",
    "GpioSettings",
    "InputPin",
    "OutputPin",
    "PinClaimed",
    "PinOwner",
    "PwmPin",
]
