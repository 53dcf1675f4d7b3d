"""An SMBus-compatible fake bus with register-map devices that record their history.

``FakeSMBus`` has the methods of ``smbus2.SMBus`` the I2C driver uses (byte/word/block
register reads and writes, ``i2c_rdwr`` with ``smbus2.i2c_msg``, ``close``) and fails the
way a real bus does: an address nobody answers at raises ``OSError(121)`` (EREMOTEIO),
block transfers past 32 bytes raise, a closed bus raises ``OSError(9)``. Each device is a
256-byte register map with an auto-incrementing pointer; chips add their behaviour (a
BME280 measures when put in forced mode, an ADS1115 converts on a config write, an SHT31
answers a command with CRC'd words). Every transaction lands in ``bus.history``.

Use it as the I2C driver's bus factory: ``I2CDriver(name, settings, bus_factory=lambda
settings: bus)``.
"""

from __future__ import annotations

import errno
import struct
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from mechaway.drivers.i2c import chips


class FakeDevice:
    """A device with a 256-byte register map and a register pointer."""

    def __init__(self, regs: dict[int, int] | None = None) -> None:
        self.regs = bytearray(256)
        for reg, value in (regs or {}).items():
            self.regs[reg] = value
        self.pointer = 0

    def set_block(self, reg: int, data: Iterable[int]) -> None:
        for i, b in enumerate(data):
            self.regs[(reg + i) & 0xFF] = b

    # what the bus calls; chips override to add behaviour
    def write(self, data: bytes) -> None:
        """A write transfer: the first byte sets the pointer, the rest are stored from it."""
        if not data:
            return
        self.pointer = data[0]
        for b in data[1:]:
            self.on_write(self.pointer, b)
            self.pointer = (self.pointer + 1) & 0xFF

    def on_write(self, reg: int, value: int) -> None:
        self.regs[reg] = value

    def read(self, n: int) -> bytes:
        """A read transfer: ``n`` bytes from the pointer on."""
        out = bytes(self.on_read((self.pointer + i) & 0xFF) for i in range(n))
        self.pointer = (self.pointer + n) & 0xFF
        return out

    def on_read(self, reg: int) -> int:
        return self.regs[reg]


@dataclass
class Transaction:
    """One bus transaction: ``op`` is the SMBus method; ``data`` written or read."""

    op: str
    addr: int
    reg: int | None = None
    data: bytes = b""


@dataclass
class FakeSMBus:
    """A bus of fake devices by address (``fail``: addresses that do not answer, by errno)."""

    devices: dict[int, FakeDevice] = field(default_factory=dict)
    fail: dict[int, int] = field(default_factory=dict)
    history: list[Transaction] = field(default_factory=list)
    closed: bool = False
    #: every call made, counted (to check that nothing runs on a closed or wrong bus)
    calls: int = 0

    def _dev(self, addr: int) -> FakeDevice:
        self.calls += 1
        if self.closed:
            raise OSError(errno.EBADF, "Bad file descriptor")
        code = self.fail.get(addr)
        if code is not None:
            raise OSError(code, errno.errorcode.get(code, "error"))
        dev = self.devices.get(addr)
        if dev is None:
            raise OSError(errno.EREMOTEIO, "Remote I/O error")
        return dev

    # -- the SMBus methods ------------------------------------------------------------
    def read_byte_data(self, i2c_addr: int, register: int, force: Any = None) -> int:
        dev = self._dev(i2c_addr)
        dev.write(bytes([register]))
        value = dev.read(1)
        self.history.append(Transaction("read_byte_data", i2c_addr, register, value))
        return value[0]

    def write_byte_data(self, i2c_addr: int, register: int, value: int, force: Any = None) -> None:
        dev = self._dev(i2c_addr)
        dev.write(bytes([register, value]))
        self.history.append(Transaction("write_byte_data", i2c_addr, register, bytes([value])))

    def read_word_data(self, i2c_addr: int, register: int, force: Any = None) -> int:
        dev = self._dev(i2c_addr)
        dev.write(bytes([register]))
        data = dev.read(2)
        self.history.append(Transaction("read_word_data", i2c_addr, register, data))
        return int(struct.unpack("<H", data)[0])  # SMBus words are little-endian

    def write_word_data(self, i2c_addr: int, register: int, value: int, force: Any = None) -> None:
        dev = self._dev(i2c_addr)
        data = struct.pack("<H", value)
        dev.write(bytes([register]) + data)
        self.history.append(Transaction("write_word_data", i2c_addr, register, data))

    def read_i2c_block_data(
        self, i2c_addr: int, register: int, length: int, force: Any = None
    ) -> list[int]:
        if length > 32:
            raise ValueError("Desired block length over 32 bytes")
        dev = self._dev(i2c_addr)
        dev.write(bytes([register]))
        data = dev.read(length)
        self.history.append(Transaction("read_i2c_block_data", i2c_addr, register, data))
        return list(data)

    def write_i2c_block_data(
        self, i2c_addr: int, register: int, data: list[int], force: Any = None
    ) -> None:
        if len(data) > 32:
            raise ValueError("Data length cannot exceed 32 bytes")
        dev = self._dev(i2c_addr)
        dev.write(bytes([register, *data]))
        self.history.append(Transaction("write_i2c_block_data", i2c_addr, register, bytes(data)))

    def i2c_rdwr(self, *msgs: Any) -> None:
        """Combined transfers of ``smbus2.i2c_msg`` (read messages are filled in place)."""
        import ctypes

        for msg in msgs:
            dev = self._dev(msg.addr)
            if msg.flags & 0x0001:  # I2C_M_RD
                data = dev.read(msg.len)
                ctypes.memmove(msg.buf, data, msg.len)
                self.history.append(Transaction("i2c_rdwr.read", msg.addr, None, data))
            else:
                data = bytes(msg)
                dev.write(data)
                self.history.append(Transaction("i2c_rdwr.write", msg.addr, None, data))

    def close(self) -> None:
        self.closed = True

    # -- for tests ----------------------------------------------------------------------
    def ops(self, addr: int | None = None) -> list[str]:
        return [t.op for t in self.history if addr is None or t.addr == addr]


# ---------------------------------------------------------------------------------------
# chips
# ---------------------------------------------------------------------------------------
class FakeTMP102(FakeDevice):
    """A TMP102: the temperature register holds ``celsius`` (12-bit, or 13 if extended)."""

    def __init__(self, celsius: float = 21.5, extended: bool = False) -> None:
        super().__init__()
        self.extended = extended
        self.celsius = celsius

    @property
    def celsius(self) -> float:
        return self._celsius

    @celsius.setter
    def celsius(self, value: float) -> None:
        self._celsius = value
        code = round(value / 0.0625)
        word = ((code & 0x1FFF) << 3) | 1 if self.extended else (code & 0xFFF) << 4
        self.set_block(chips.TMP102_TEMP, word.to_bytes(2, "big"))


#: the BMP280/BME280 datasheet's worked example (temperature and pressure) plus humidity
#: trimming values read from a real BME280
DATASHEET_CALIBRATION = chips.Bme280Calibration(
    T1=27504, T2=26435, T3=-1000,
    P1=36477, P2=-10685, P3=3024, P4=2855, P5=140, P6=-7, P7=15500, P8=-14600, P9=6000,
    H1=75, H2=376, H3=0, H4=286, H5=50, H6=30,
)  # fmt: skip


def calibration_bytes(cal: chips.Bme280Calibration) -> tuple[bytes, bytes]:
    """The two calibration blocks (0x88, 0xE1) a chip with ``cal`` holds."""
    words = (cal.T1, cal.T2, cal.T3, cal.P1, cal.P2, cal.P3, cal.P4, cal.P5, cal.P6, cal.P7,
             cal.P8, cal.P9)  # fmt: skip
    b1 = struct.pack("<HhhHhhhhhhhh", *words) + bytes([0, cal.H1])
    h4, h5 = cal.H4 & 0xFFF, cal.H5 & 0xFFF
    b2 = struct.pack("<hB", cal.H2, cal.H3) + bytes(
        [h4 >> 4, (h4 & 0x0F) | ((h5 & 0x0F) << 4), h5 >> 4]
    ) + struct.pack("<b", cal.H6)
    return b1, b2


class FakeBME280(FakeDevice):
    """A BME280: chip id, calibration, and one measurement of ``adc`` (adc_T, adc_P,
    adc_H) each time ctrl_meas is written in forced mode (then back to sleep). Before a
    first measurement the data registers read as 'skipped' (0x80000, 0x8000), as on a
    chip just powered up."""

    def __init__(
        self,
        cal: chips.Bme280Calibration = DATASHEET_CALIBRATION,
        adc: tuple[int, int, int] = (519888, 415148, 30281),
        chip_id: int = chips.BME280_CHIP_ID,
    ) -> None:
        super().__init__({chips.BME280_REG_ID: chip_id})
        b1, b2 = calibration_bytes(cal)
        self.set_block(chips.BME280_REG_CALIB1, b1)
        self.set_block(chips.BME280_REG_CALIB2, b2)
        self.adc = adc
        self.measurements = 0
        self._store(0x80000, 0x80000, 0x8000)

    def _store(self, adc_t: int, adc_p: int, adc_h: int) -> None:
        self.set_block(chips.BME280_REG_DATA, [
            adc_p >> 12, (adc_p >> 4) & 0xFF, (adc_p & 0xF) << 4,
            adc_t >> 12, (adc_t >> 4) & 0xFF, (adc_t & 0xF) << 4,
            adc_h >> 8, adc_h & 0xFF,
        ])  # fmt: skip

    def on_write(self, reg: int, value: int) -> None:
        super().on_write(reg, value)
        if reg == chips.BME280_REG_CTRL_MEAS and value & 0b11 in (0b01, 0b10):
            adc_t, adc_p, adc_h = self.adc
            osrs_h = self.regs[chips.BME280_REG_CTRL_HUM] & 0b111
            self._store(adc_t, adc_p if value & 0b11100 else 0x80000,
                        adc_h if osrs_h else 0x8000)  # fmt: skip
            self.measurements += 1
            self.regs[reg] = value & ~0b11  # back to sleep, measurement done


class FakeSHT31(FakeDevice):
    """An SHT31: a single-shot command measures; a read returns T, CRC, RH, CRC
    (``corrupt``: that many next reads carry a wrong temperature CRC)."""

    def __init__(self, celsius: float = 22.0, humidity: float = 45.0) -> None:
        super().__init__()
        self.celsius = celsius
        self.humidity = humidity
        self.corrupt = 0
        self.commands: list[int] = []
        self._out = b""

    def write(self, data: bytes) -> None:
        self.commands.append(int.from_bytes(data, "big"))
        if len(data) == 2 and data[0] == 0x24:
            st = round((self.celsius + 45.0) * 65535.0 / 175.0)
            srh = round(self.humidity * 65535.0 / 100.0)
            t, h = st.to_bytes(2, "big"), srh.to_bytes(2, "big")
            crc_t = chips.crc8(t) ^ (0xFF if self.corrupt else 0)
            self.corrupt = max(0, self.corrupt - 1)
            self._out = t + bytes([crc_t]) + h + bytes([chips.crc8(h)])

    def read(self, n: int) -> bytes:
        out, self._out = self._out[:n], b""
        if len(out) < n:  # nothing measured: a real chip NACKs the read
            raise OSError(errno.EREMOTEIO, "Remote I/O error")
        return out


class FakeADS1115(FakeDevice):
    """An ADS1115 (four 16-bit registers, MSB first): a config write with OS set converts
    the selected input (``volts`` per single-ended channel; a differential pair reads
    their difference) at the PGA's scale, clipped to its full scale; ``busy_reads``: that
    many config reads say 'converting'."""

    def __init__(self, volts: tuple[float, float, float, float] = (0.0, 0.0, 0.0, 0.0)) -> None:
        super().__init__()
        self.volts = list(volts)
        self.busy_reads = 0
        self.conversions = 0
        #: conversion, config (power-on default), lo_thresh, hi_thresh
        self.words = [0, 0x8583, 0x8000, 0x7FFF]

    def write(self, data: bytes) -> None:
        if not data:
            return
        self.pointer = data[0] & 0b11
        if len(data) >= 3:
            word = (data[1] << 8) | data[2]
            if self.pointer == chips.ADS1115_CONFIG and word & 0x8000:
                self._convert(word)
                word &= 0x7FFF  # converting (OS reads 0 until done)
            if self.pointer != chips.ADS1115_CONVERSION:  # read-only
                self.words[self.pointer] = word

    def _convert(self, config: int) -> None:
        mux = (config >> 12) & 0b111
        pga = (config >> 9) & 0b111
        fsr = {v[0]: v[1] for v in chips.ADS1115_GAINS.values()}.get(pga, 0.256)
        pairs = {0: (0, 1), 1: (0, 3), 2: (1, 3), 3: (2, 3)}
        if mux >= 4:
            v = self.volts[mux - 4]
        else:
            v = self.volts[pairs[mux][0]] - self.volts[pairs[mux][1]]
        self.words[chips.ADS1115_CONVERSION] = max(-32768, min(32767, round(v / fsr * 32768)))
        self.conversions += 1

    def read(self, n: int) -> bytes:
        word = self.words[self.pointer]
        if self.pointer == chips.ADS1115_CONFIG:
            if self.busy_reads:
                self.busy_reads -= 1
            else:
                word |= 0x8000  # idle: the conversion is done
        data = word.to_bytes(2, "big", signed=word < 0)
        return (data * (n // 2 + 1))[:n]
