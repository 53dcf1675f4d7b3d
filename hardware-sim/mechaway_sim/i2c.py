"""Simulated I2C chips: register maps that behave like the parts, read from the world.

Each device takes the two kinds of transfer a bus carries: a write (the first byte sets
the register pointer, the rest are stored from it) and a read (bytes from the pointer on,
auto-incrementing). A device the world says is ``silent`` does not acknowledge: the bus
answers errno 121 (EREMOTEIO), as i2c-dev does for a NACK.

- BME280: chip id 0x60, the calibration block at 0x88/0xE1, forced and normal mode, the
  status register's measuring bit for the datasheet's measurement time. The data
  registers hold the *raw* ADC values that the datasheet's compensation, applied with this
  chip's calibration, turns into the simulated temperature, pressure and humidity: the
  compensation is inverted by bisection (each formula is monotonic in its ADC value).
- SHT31: single-shot commands, the measurement time (an early read is NACKed, as the chip
  does), six bytes with Sensirion's CRC-8 per word, the status register, soft reset.
- TMP102: pointer register, 12-bit temperature (13 in extended mode), config, limits.
- ADS1115: config write starts a single-shot conversion of the selected input at the
  PGA's scale, OS reads 0 until the conversion time at the data rate has passed.
"""

from __future__ import annotations

import errno
import struct
import time
from collections.abc import Callable
from typing import Any, ClassVar

from mechaway.drivers.i2c import chips
from mechaway_sim.scenario import I2CDevice
from mechaway_sim.world import World


class Nack(OSError):
    """The addressed device did not acknowledge."""

    def __init__(self, what: str = "no acknowledge") -> None:
        super().__init__(errno.EREMOTEIO, what)


#: the BMP280/BME280 datasheet's worked example (T, P) and a real chip's humidity trimming
CALIBRATION = chips.Bme280Calibration(
    T1=27504, T2=26435, T3=-1000,
    P1=36477, P2=-10685, P3=3024, P4=2855, P5=140, P6=-7, P7=15500, P8=-14600, P9=6000,
    H1=75, H2=376, H3=0, H4=286, H5=50, H6=30,
)  # fmt: skip


def calibration_bytes(cal: chips.Bme280Calibration) -> tuple[bytes, bytes]:
    """The two calibration blocks (26 bytes at 0x88, 7 at 0xE1) of a chip with ``cal``:
    the inverse of ``chips.bme280_calibration``."""
    words = (cal.T1, cal.T2, cal.T3, cal.P1, cal.P2, cal.P3, cal.P4, cal.P5, cal.P6, cal.P7,
             cal.P8, cal.P9)  # fmt: skip
    b1 = struct.pack("<HhhHhhhhhhhh", *words) + bytes([0, cal.H1])
    h4, h5 = cal.H4 & 0xFFF, cal.H5 & 0xFFF
    b2 = (
        struct.pack("<hB", cal.H2, cal.H3)
        + bytes([h4 >> 4, (h4 & 0x0F) | ((h5 & 0x0F) << 4), h5 >> 4])
        + struct.pack("<b", cal.H6)
    )
    return b1, b2


def _bisect(fn: Callable[[int], int], target: int, lo: int, hi: int, rising: bool) -> int:
    """The ``x`` in ``lo..hi`` whose ``fn(x)`` is closest to ``target`` (``fn`` monotonic)."""
    a, b = lo, hi
    while a < b:
        mid = (a + b) // 2
        v = fn(mid)
        if (v < target) if rising else (v > target):
            a = mid + 1
        else:
            b = mid
    best = a
    if a > lo and abs(fn(a - 1) - target) <= abs(fn(a) - target):
        best = a - 1
    return best


_SKIP20 = 0x80000
_SKIP16 = 0x8000


def bme280_adc(
    cal: chips.Bme280Calibration, celsius: float, hpa: float, rh: float
) -> tuple[int, int, int]:
    """(adc_T, adc_P, adc_H) that this calibration compensates back to the given values
    (to the chip's resolution: 0.01 °C, 1/256 Pa, 1/1024 %RH)."""
    want_t = round(celsius * 100)
    adc_t = _bisect(lambda a: chips.bme280_temperature(chips.bme280_t_fine(cal, a)), want_t,
                    0, (1 << 20) - 1, True)  # fmt: skip
    if adc_t == _SKIP20:
        adc_t += 1
    t_fine = chips.bme280_t_fine(cal, adc_t)
    adc_p = _bisect(lambda a: chips.bme280_pressure(cal, t_fine, a), round(hpa * 25600),
                    1, (1 << 20) - 1, False)  # fmt: skip
    if adc_p == _SKIP20:
        adc_p += 1
    adc_h = _bisect(lambda a: chips.bme280_humidity(cal, t_fine, a), round(rh * 1024),
                    0, 0xFFFF, True)  # fmt: skip
    if adc_h == _SKIP16:
        adc_h += 1
    return adc_t, adc_p, adc_h


class Chip:
    """A register map with an auto-incrementing pointer."""

    def __init__(self, spec: I2CDevice, world: World) -> None:
        self.spec = spec
        self.world = world
        self.name = spec.name
        self.regs = bytearray(256)
        self.pointer = 0
        self.wiring = spec.wiring()
        self.transfers = 0

    def value(self, quantity: str, default: float = 0.0) -> float:
        sig = self.wiring.get(quantity)
        if not sig:
            return default
        return self.world.signal(sig, self.name, self.spec.noise)

    def set_block(self, reg: int, data: bytes | list[int]) -> None:
        for i, b in enumerate(data):
            self.regs[(reg + i) & 0xFF] = b

    def write(self, data: bytes) -> None:
        if not data:
            return
        self.pointer = data[0]
        for b in data[1:]:
            self.on_write(self.pointer, b)
            self.pointer = (self.pointer + 1) & 0xFF

    def on_write(self, reg: int, value: int) -> None:
        self.regs[reg] = value

    def read(self, n: int) -> bytes:
        self.before_read(self.pointer, n)
        out = bytes(self.regs[(self.pointer + i) & 0xFF] for i in range(n))
        self.pointer = (self.pointer + n) & 0xFF
        return out

    def before_read(self, reg: int, n: int) -> None:
        """Chips refresh what a read is about to see."""


class Bme280(Chip):
    """See the module docstring."""

    def __init__(self, spec: I2CDevice, world: World,
                 cal: chips.Bme280Calibration = CALIBRATION) -> None:  # fmt: skip
        super().__init__(spec, world)
        self.cal = cal
        self._reset()
        self.measurements = 0
        self._done_at = 0.0

    def _reset(self) -> None:
        self.regs = bytearray(256)
        self.regs[chips.BME280_REG_ID] = chips.BME280_CHIP_ID
        b1, b2 = calibration_bytes(self.cal)
        self.set_block(chips.BME280_REG_CALIB1, b1)
        self.set_block(chips.BME280_REG_CALIB2, b2)
        self._store(_SKIP20, _SKIP20, _SKIP16)  # nothing measured since power-up

    def _store(self, adc_t: int, adc_p: int, adc_h: int) -> None:
        self.set_block(chips.BME280_REG_DATA, [
            adc_p >> 12, (adc_p >> 4) & 0xFF, (adc_p & 0xF) << 4,
            adc_t >> 12, (adc_t >> 4) & 0xFF, (adc_t & 0xF) << 4,
            adc_h >> 8, adc_h & 0xFF,
        ])  # fmt: skip

    def on_write(self, reg: int, value: int) -> None:
        if reg == 0xE0:  # reset register: 0xB6 resets
            if value == 0xB6:
                self._reset()
            return
        if reg not in (chips.BME280_REG_CTRL_HUM, chips.BME280_REG_CTRL_MEAS,
                       chips.BME280_REG_CONFIG):  # fmt: skip
            return  # read-only
        self.regs[reg] = value
        if reg == chips.BME280_REG_CTRL_MEAS and value & 0b11 in (0b01, 0b10):
            self._measure()
            self.regs[reg] = value & ~0b11  # forced: back to sleep when done

    def _measure(self) -> None:
        ctrl = self.regs[chips.BME280_REG_CTRL_MEAS]
        osrs_t, osrs_p = (ctrl >> 5) & 0b111, (ctrl >> 2) & 0b111
        osrs_h = self.regs[chips.BME280_REG_CTRL_HUM] & 0b111
        t = self.value("temperature_c", 20.0)
        p = self.value("pressure_hpa", 1013.25)
        h = min(100.0, max(0.0, self.value("humidity_pct", 50.0)))
        adc_t, adc_p, adc_h = bme280_adc(self.cal, t, p, h)
        self._store(adc_t if osrs_t else _SKIP20, adc_p if osrs_p else _SKIP20,
                    adc_h if osrs_h else _SKIP16)  # fmt: skip
        over = max(1, 1 << (max(osrs_t, osrs_p, osrs_h, 1) - 1))
        self._done_at = time.monotonic() + chips.bme280_measure_s(over)
        self.measurements += 1

    def before_read(self, reg: int, n: int) -> None:
        mode = self.regs[chips.BME280_REG_CTRL_MEAS] & 0b11
        if mode == 0b11 and reg <= chips.BME280_REG_DATA < reg + n:  # normal: continuous
            self._measure()
            self._done_at = 0.0
        busy = time.monotonic() < self._done_at
        self.regs[chips.BME280_REG_STATUS] = 0x08 if busy else 0x00


class Sht31(Chip):
    """See the module docstring."""

    #: command -> measurement seconds (single shot, with and without clock stretching)
    MEASURE: ClassVar[dict[int, float]] = {0x2400: 0.0155, 0x240B: 0.0065, 0x2416: 0.0045,
               0x2C06: 0.0, 0x2C0D: 0.0, 0x2C10: 0.0}  # fmt: skip

    def __init__(self, spec: I2CDevice, world: World) -> None:
        super().__init__(spec, world)
        self._out = b""
        self._ready_at = 0.0
        self.status = 0x0000
        self.measurements = 0

    def write(self, data: bytes) -> None:
        if len(data) != 2:
            raise Nack("SHT31: commands are two bytes")
        cmd = (data[0] << 8) | data[1]
        if cmd in self.MEASURE:
            t = self.value("temperature_c", 20.0)
            h = min(100.0, max(0.0, self.value("humidity_pct", 50.0)))
            st = min(0xFFFF, max(0, round((t + 45.0) * 65535.0 / 175.0)))
            srh = min(0xFFFF, max(0, round(h * 65535.0 / 100.0)))
            self._out = _crc_words(st, srh)
            self._ready_at = time.monotonic() + self.MEASURE[cmd]
            self.measurements += 1
        elif cmd == 0xF32D:  # read status
            self._out = _crc_words(self.status)
            self._ready_at = 0.0
        elif cmd == 0x3041:  # clear status
            self.status = 0
        elif cmd == 0x30A2:  # soft reset
            self._out, self.status = b"", 0
        else:
            raise Nack(f"SHT31: unknown command 0x{cmd:04x}")

    def read(self, n: int) -> bytes:
        if not self._out or time.monotonic() < self._ready_at:
            raise Nack("SHT31: no measurement ready (the chip NACKs the read)")
        out, self._out = self._out[:n], b""
        return out + bytes(max(0, n - len(out)))


def _crc_words(*words: int) -> bytes:
    out = bytearray()
    for w in words:
        b = w.to_bytes(2, "big")
        out += b + bytes([chips.crc8(b)])
    return bytes(out)


class Tmp102(Chip):
    """Four 16-bit registers behind a pointer: temperature (read-only), config, T_low,
    T_high; continuous conversion (the temperature is current at each read)."""

    def __init__(self, spec: I2CDevice, world: World) -> None:
        super().__init__(spec, world)
        self.words = [0, 0x60A0, 0x4B00, 0x5000]

    def write(self, data: bytes) -> None:
        if not data:
            return
        self.pointer = data[0] & 0b11
        if len(data) >= 3 and self.pointer:
            self.words[self.pointer] = (data[1] << 8) | data[2]

    def read(self, n: int) -> bytes:
        if self.pointer == 0:
            extended = bool(self.words[1] & 0x0010)
            code = round(self.value("temperature_c", 20.0) / 0.0625)
            if extended:
                code = max(-(1 << 12), min((1 << 12) - 1, code))
                self.words[0] = ((code & 0x1FFF) << 3) | 1
            else:
                code = max(-(1 << 11), min((1 << 11) - 1, code))
                self.words[0] = (code & 0xFFF) << 4
        data = self.words[self.pointer].to_bytes(2, "big")
        return (data * (n // 2 + 1))[:n]


class Ads1115(Chip):
    """See the module docstring; an input's signal times ``volts_per_unit`` is its volts."""

    def __init__(self, spec: I2CDevice, world: World) -> None:
        super().__init__(spec, world)
        self.words = [0, 0x8583, 0x8000, 0x7FFF]
        self._done_at = 0.0
        self.conversions = 0

    def volts(self, ain: int) -> float:
        key = f"ain{ain}"
        return self.value(key) * self.spec.volts_per_unit.get(key, 1.0)

    def write(self, data: bytes) -> None:
        if not data:
            return
        self.pointer = data[0] & 0b11
        if len(data) >= 3:
            word = (data[1] << 8) | data[2]
            if self.pointer == chips.ADS1115_CONFIG and word & 0x8000:
                self._convert(word)
                word &= 0x7FFF
            if self.pointer != chips.ADS1115_CONVERSION:
                self.words[self.pointer] = word

    def _convert(self, config: int) -> None:
        mux, pga, dr = (config >> 12) & 0b111, (config >> 9) & 0b111, (config >> 5) & 0b111
        fsr = {v[0]: v[1] for v in chips.ADS1115_GAINS.values()}.get(pga, 0.256)
        pairs = {0: (0, 1), 1: (0, 3), 2: (1, 3), 3: (2, 3)}
        if mux >= 4:
            v = self.volts(mux - 4)
        else:
            a, b = pairs[mux]
            v = self.volts(a) - self.volts(b)
        self.words[chips.ADS1115_CONVERSION] = max(-32768, min(32767, round(v / fsr * 32768)))
        rate = {code: r for r, code in chips.ADS1115_RATES.items()}[dr]
        self._done_at = time.monotonic() + 1.0 / rate
        self.conversions += 1

    def read(self, n: int) -> bytes:
        word = self.words[self.pointer]
        if self.pointer == chips.ADS1115_CONFIG and time.monotonic() >= self._done_at:
            word |= 0x8000  # idle: the conversion is done
        data = word.to_bytes(2, "big", signed=word < 0)
        return (data * (n // 2 + 1))[:n]


CHIPS: dict[str, type[Chip]] = {"bme280": Bme280, "sht31": Sht31, "tmp102": Tmp102,
                                "ads1115": Ads1115}  # fmt: skip


class I2CBuses:
    """Every simulated bus: ``xfer(bus, msgs)`` is one combined transaction."""

    def __init__(self, world: World, specs: list[I2CDevice]) -> None:
        self.world = world
        self.devices: dict[tuple[int, int], Chip] = {}
        for spec in specs:
            self.devices[(spec.bus, spec.addr)] = CHIPS[spec.chip](spec, world)
        self.transactions = 0

    def by_name(self, name: str) -> Chip:
        for dev in self.devices.values():
            if dev.name == name:
                return dev
        raise KeyError(name)

    def xfer(self, bus: int, msgs: list[list[Any]]) -> list[list[int]]:
        """Messages ``[addr, [bytes]]`` (write) or ``[addr, n]`` (read), in order; what
        each read got. ``Nack`` (errno 121) if an address does not acknowledge."""
        self.transactions += 1
        reads: list[list[int]] = []
        for msg in msgs:
            addr, what = msg
            dev = self.devices.get((bus, addr))
            if dev is None or self.world.fault(dev.name, "silent") is not None:
                raise Nack(f"bus {bus}: nothing acknowledges at 0x{addr:02x}")
            dev.transfers += 1
            if isinstance(what, list):
                dev.write(bytes(what))
            else:
                if not 0 <= int(what) <= 4096:
                    raise OSError(errno.EINVAL, f"read of {what} bytes")
                reads.append(list(dev.read(int(what))))
        return reads
