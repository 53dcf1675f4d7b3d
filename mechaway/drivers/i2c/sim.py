"""``[i2c.NAME] backend = "sim"``: an SMBus-compatible bus whose devices are the hardware
simulator's register maps, reached over its local socket (``mechaway.drivers.simlink``).

``SimSMBus`` has the methods of ``smbus2.SMBus`` the I2C driver and its readers use and
fails the same way: a device that does not acknowledge raises ``OSError(121)``, a block
longer than 32 bytes raises ``ValueError``, a simulator that went away raises an
``OSError`` with ENODEV (the driver reopens the bus, as for an adapter unplugged). Each
SMBus call is one combined transaction on the simulated bus (a write of the register, a
repeated start, the read), as i2c-dev does it.
"""

from __future__ import annotations

import ctypes
import errno
from typing import Any

from mechaway.drivers.simlink import SimLink

#: smbus2's flag of a read message in ``i2c_rdwr``
I2C_M_RD = 0x0001
BLOCK_MAX = 32


class SimSMBus:
    """Bus ``bus`` of the simulator at ``socket`` (None: the default path)."""

    def __init__(self, bus: int, socket: str | None = None) -> None:
        self.bus = bus
        self._link: SimLink | None = SimLink(socket)

    def _xfer(self, msgs: list[list[Any]]) -> list[list[int]]:
        link = self._link
        if link is None:
            raise OSError(errno.EBADF, "Bad file descriptor")
        result: list[list[int]] = link.call("i2c", bus=self.bus, m=msgs)
        return result

    # -- the SMBus methods ------------------------------------------------------------
    def read_byte(self, i2c_addr: int, force: Any = None) -> int:
        return self._xfer([[i2c_addr, 1]])[0][0]

    def write_byte(self, i2c_addr: int, value: int, force: Any = None) -> None:
        self._xfer([[i2c_addr, [value & 0xFF]]])

    def write_quick(self, i2c_addr: int, force: Any = None) -> None:
        self._xfer([[i2c_addr, []]])

    def read_byte_data(self, i2c_addr: int, register: int, force: Any = None) -> int:
        return self._xfer([[i2c_addr, [register]], [i2c_addr, 1]])[0][0]

    def write_byte_data(self, i2c_addr: int, register: int, value: int, force: Any = None) -> None:
        self._xfer([[i2c_addr, [register, value & 0xFF]]])

    def read_word_data(self, i2c_addr: int, register: int, force: Any = None) -> int:
        lo, hi = self._xfer([[i2c_addr, [register]], [i2c_addr, 2]])[0]
        return lo | (hi << 8)  # SMBus words are little-endian

    def write_word_data(self, i2c_addr: int, register: int, value: int, force: Any = None) -> None:
        self._xfer([[i2c_addr, [register, value & 0xFF, (value >> 8) & 0xFF]]])

    def read_i2c_block_data(
        self, i2c_addr: int, register: int, length: int, force: Any = None
    ) -> list[int]:
        if length > BLOCK_MAX:
            raise ValueError("Desired block length over 32 bytes")
        return self._xfer([[i2c_addr, [register]], [i2c_addr, length]])[0]

    def write_i2c_block_data(
        self, i2c_addr: int, register: int, data: list[int], force: Any = None
    ) -> None:
        if len(data) > BLOCK_MAX:
            raise ValueError("Data length cannot exceed 32 bytes")
        self._xfer([[i2c_addr, [register, *data]]])

    def i2c_rdwr(self, *msgs: Any) -> None:
        """Combined transfers of ``smbus2.i2c_msg``; read messages are filled in place."""
        wire: list[list[Any]] = []
        reads = []
        for msg in msgs:
            if msg.flags & I2C_M_RD:
                wire.append([msg.addr, msg.len])
                reads.append(msg)
            else:
                wire.append([msg.addr, list(bytes(msg))])
        for msg, data in zip(reads, self._xfer(wire), strict=True):
            ctypes.memmove(msg.buf, bytes(data), msg.len)

    def close(self) -> None:
        link, self._link = self._link, None
        if link is not None:
            link.close()
