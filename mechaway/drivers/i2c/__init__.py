"""I2C driver: ``[i2c.NAME]`` buses (``driver``), the pure chip decoders (``chips``) and
the chips' register sequences (``devices``). Importing this package imports no smbus2."""

from mechaway.drivers.i2c.driver import (
    BUS_FACTORIES,
    DeviceNotAnswering,
    I2CDriver,
    I2CError,
    I2CSettings,
)

__all__ = ["BUS_FACTORIES", "DeviceNotAnswering", "I2CDriver", "I2CError", "I2CSettings"]
