"""Serial ports (pyserial, imported when a port opens) and the mechaway bridge protocol.

``[serial.NAME]`` sections configure ``SerialDriver`` connections; ``protocol`` is the
bridge protocol's pure half (framers, COBS, CRC-16, message validation), shared with the
firmware bridges' tests.
"""

from mechaway.drivers.serial.driver import (
    CommandFailed,
    Received,
    SerialDriver,
    SerialSettings,
    WriteRefused,
)

__all__ = ["CommandFailed", "Received", "SerialDriver", "SerialSettings", "WriteRefused"]
