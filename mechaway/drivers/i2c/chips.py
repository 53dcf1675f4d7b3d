"""Pure decoders for the built-in I2C chips: bytes in, values out, no bus, no I/O.

Everything a device sends is checked here before it becomes a number: a wrong chip id, a
CRC that does not match, a blank calibration, a measurement the chip skipped, a register
block of the wrong length each raise ``ChipError`` saying which chip and what was wrong.

- TMP102 (TI SBOS397): 12-bit two's complement, 0.0625 °C per LSB; 13-bit in extended
  mode (bit 0 of the second byte set).
- BME280 (Bosch BST-BME280-DS002): the datasheet's integer compensation formulas (section
  4.2.3: 32-bit temperature, 64-bit pressure, 32-bit humidity), calibration from
  0x88..0xA1 and 0xE1..0xE7, forced mode.
- SHT31 (Sensirion SHT3x-DIS): single shot, CRC-8 (polynomial 0x31, init 0xFF) per word.
- ADS1115 (TI SBAS444): single-shot conversions, PGA gain, single-ended or differential.
- raw registers: int/uint 8/16/32 in either byte order, then ``value * scale + offset``.
"""

from __future__ import annotations

import math
import struct
from dataclasses import dataclass
from typing import Literal


class ChipError(ValueError):
    """A device answered with bytes that cannot be a valid reading."""


def _need(data: bytes | bytearray | list[int], n: int, what: str) -> bytes:
    if len(data) != n:
        raise ChipError(f"{what}: expected {n} bytes, got {len(data)}")
    return bytes(data)


# ---------------------------------------------------------------------------------------
# TMP102
# ---------------------------------------------------------------------------------------
TMP102_ADDRESS = 0x48
TMP102_TEMP = 0x00


def tmp102_celsius(data: bytes | bytearray | list[int]) -> float:
    """The temperature register's two bytes (MSB first) -> °C."""
    msb, lsb = _need(data, 2, "TMP102 temperature")
    word = (msb << 8) | lsb
    if word & 1:  # extended mode: 13 bits
        raw = word >> 3
        if raw & 0x1000:
            raw -= 1 << 13
    else:
        raw = word >> 4
        if raw & 0x800:
            raw -= 1 << 12
    return raw * 0.0625


# ---------------------------------------------------------------------------------------
# BME280
# ---------------------------------------------------------------------------------------
BME280_ADDRESS = 0x76
BME280_CHIP_ID = 0x60
BME280_REG_ID = 0xD0
BME280_REG_CALIB1 = 0x88  # 26 bytes: T1..T3, P1..P9, (0xA0 unused), H1
BME280_REG_CALIB2 = 0xE1  # 7 bytes: H2..H6
BME280_REG_CTRL_HUM = 0xF2
BME280_REG_STATUS = 0xF3
BME280_REG_CTRL_MEAS = 0xF4
BME280_REG_CONFIG = 0xF5
BME280_REG_DATA = 0xF7  # 8 bytes: press msb/lsb/xlsb, temp msb/lsb/xlsb, hum msb/lsb
#: other Bosch chips that answer at 0x76/0x77 (what a wrong id probably is)
BOSCH_IDS = {0x55: "BMP180", 0x56: "BMP280 (sample)", 0x57: "BMP280 (sample)",
             0x58: "BMP280", 0x61: "BME680"}  # fmt: skip
#: what the chip reports for a measurement it skipped (oversampling 0)
_SKIPPED_20 = 0x80000
_SKIPPED_16 = 0x8000
_OSRS = {1: 0b001, 2: 0b010, 4: 0b011, 8: 0b100, 16: 0b101}


def bme280_check_id(chip_id: int) -> None:
    """``ChipError`` unless ``chip_id`` is a BME280's 0x60 (naming what it is instead)."""
    if chip_id != BME280_CHIP_ID:
        other = BOSCH_IDS.get(chip_id)
        what = f"a {other}, not a BME280" if other else "not a BME280"
        raise ChipError(f"BME280: chip id 0x{chip_id:02x} (expected 0x60): {what}")


@dataclass(frozen=True, slots=True)
class Bme280Calibration:
    """The factory trimming parameters (datasheet table 16)."""

    T1: int
    T2: int
    T3: int
    P1: int
    P2: int
    P3: int
    P4: int
    P5: int
    P6: int
    P7: int
    P8: int
    P9: int
    H1: int
    H2: int
    H3: int
    H4: int
    H5: int
    H6: int


def bme280_calibration(
    block1: bytes | bytearray | list[int], block2: bytes | bytearray | list[int]
) -> Bme280Calibration:
    """Calibration from the 26 bytes at 0x88 and the 7 at 0xE1."""
    b1 = _need(block1, 26, "BME280 calibration 0x88..0xA1")
    b2 = _need(block2, 7, "BME280 calibration 0xE1..0xE7")
    t1, t2, t3, p1, p2, p3, p4, p5, p6, p7, p8, p9 = struct.unpack_from("<HhhHhhhhhhhh", b1)
    h1 = b1[25]
    h2 = struct.unpack_from("<h", b2)[0]
    h3 = b2[2]
    h4 = _s12((b2[3] << 4) | (b2[4] & 0x0F))
    h5 = _s12((b2[5] << 4) | (b2[4] >> 4))
    h6 = struct.unpack_from("<b", b2, 6)[0]
    if t1 == 0 or p1 == 0:
        raise ChipError(
            f"BME280: calibration looks blank (dig_T1={t1}, dig_P1={p1}): a bad read or not "
            f"a BME280"
        )
    return Bme280Calibration(t1, t2, t3, p1, p2, p3, p4, p5, p6, p7, p8, p9,
                             h1, h2, h3, h4, h5, h6)  # fmt: skip


def _s12(v: int) -> int:
    return v - (1 << 12) if v & 0x800 else v


def bme280_raw(data: bytes | bytearray | list[int]) -> tuple[int, int, int]:
    """(adc_T, adc_P, adc_H) from the 8 data bytes at 0xF7."""
    d = _need(data, 8, "BME280 data 0xF7..0xFE")
    adc_p = (d[0] << 12) | (d[1] << 4) | (d[2] >> 4)
    adc_t = (d[3] << 12) | (d[4] << 4) | (d[5] >> 4)
    adc_h = (d[6] << 8) | d[7]
    return adc_t, adc_p, adc_h


def _cdiv(n: int, d: int) -> int:
    """C's integer division (truncates toward zero; Python's // floors)."""
    q = abs(n) // abs(d)
    return q if (n >= 0) == (d >= 0) else -q


def bme280_t_fine(cal: Bme280Calibration, adc_t: int) -> int:
    """The datasheet's ``t_fine`` (BME280_compensate_T_int32's intermediate)."""
    var1 = (((adc_t >> 3) - (cal.T1 << 1)) * cal.T2) >> 11
    var2 = (((((adc_t >> 4) - cal.T1) * ((adc_t >> 4) - cal.T1)) >> 12) * cal.T3) >> 14
    return var1 + var2


def bme280_temperature(t_fine: int) -> int:
    """°C x 100 (``5123`` is 51.23 °C)."""
    return (t_fine * 5 + 128) >> 8


def bme280_pressure(cal: Bme280Calibration, t_fine: int, adc_p: int) -> int:
    """Pa in Q24.8 (``24674867`` is 24674867 / 256 = 96386.2 Pa); the 64-bit formula."""
    var1 = t_fine - 128000
    var2 = var1 * var1 * cal.P6
    var2 = var2 + ((var1 * cal.P5) << 17)
    var2 = var2 + (cal.P4 << 35)
    var1 = ((var1 * var1 * cal.P3) >> 8) + ((var1 * cal.P2) << 12)
    var1 = (((1 << 47) + var1) * cal.P1) >> 33
    if var1 == 0:
        raise ChipError("BME280: pressure compensation divides by zero (bad calibration)")
    p = 1048576 - adc_p
    p = _cdiv(((p << 31) - var2) * 3125, var1)
    var1 = (cal.P9 * (p >> 13) * (p >> 13)) >> 25
    var2 = (cal.P8 * p) >> 19
    return ((p + var1 + var2) >> 8) + (cal.P7 << 4)


def bme280_humidity(cal: Bme280Calibration, t_fine: int, adc_h: int) -> int:
    """%RH in Q22.10 (``47445`` is 47445 / 1024 = 46.333 %RH), clamped to 0..100 %."""
    v = t_fine - 76800
    v = ((((adc_h << 14) - (cal.H4 << 20) - (cal.H5 * v)) + 16384) >> 15) * (
        ((((((v * cal.H6) >> 10) * (((v * cal.H3) >> 11) + 32768)) >> 10) + 2097152)
         * cal.H2 + 8192) >> 14
    )  # fmt: skip
    v = v - (((((v >> 15) * (v >> 15)) >> 7) * cal.H1) >> 4)
    v = min(max(v, 0), 419430400)
    return v >> 12


def bme280_decode(cal: Bme280Calibration, data: bytes | bytearray | list[int]) -> dict[str, float]:
    """The 8 data bytes -> ``{temperature_c, pressure_hpa, humidity_pct}``."""
    adc_t, adc_p, adc_h = bme280_raw(data)
    if adc_t == _SKIPPED_20:
        raise ChipError("BME280: no temperature measurement (0x80000: not measured yet?)")
    t_fine = bme280_t_fine(cal, adc_t)
    out = {"temperature_c": bme280_temperature(t_fine) / 100.0}
    if adc_p != _SKIPPED_20:
        out["pressure_hpa"] = bme280_pressure(cal, t_fine, adc_p) / 25600.0
    if adc_h != _SKIPPED_16:
        out["humidity_pct"] = bme280_humidity(cal, t_fine, adc_h) / 1024.0
    return out


def bme280_ctrl(oversampling: int) -> tuple[int, int]:
    """(ctrl_hum, ctrl_meas) for one forced-mode measurement of all three at
    ``oversampling`` x (1, 2, 4, 8 or 16)."""
    osrs = _OSRS[oversampling]
    return osrs, (osrs << 5) | (osrs << 2) | 0b01


def bme280_measure_s(oversampling: int) -> float:
    """The datasheet's maximum measurement time (appendix 9.1) for all three, seconds."""
    return (1.25 + 2.3 * oversampling * 3 + 0.575 * 2) / 1000.0


# ---------------------------------------------------------------------------------------
# SHT31
# ---------------------------------------------------------------------------------------
SHT31_ADDRESS = 0x44
#: single shot, no clock stretching: high, medium, low repeatability (datasheet table 9)
SHT31_MEASURE = {"high": (0x24, 0x00), "medium": (0x24, 0x0B), "low": (0x24, 0x16)}
#: maximum measurement duration per repeatability, seconds (datasheet table 4)
SHT31_MEASURE_S = {"high": 0.0155, "medium": 0.0065, "low": 0.0045}


def _shift8(crc: int) -> int:
    for _ in range(8):
        crc = ((crc << 1) ^ 0x31) & 0xFF if crc & 0x80 else (crc << 1) & 0xFF
    return crc


#: the register after shifting each byte value through the polynomial: one lookup a byte
_CRC8_TABLE = tuple(_shift8(b) for b in range(256))


def crc8(data: bytes | bytearray | list[int]) -> int:
    """Sensirion's CRC-8: polynomial 0x31, init 0xFF, no reflection, no final XOR."""
    crc = 0xFF
    table = _CRC8_TABLE
    for byte in data:
        crc = table[crc ^ byte]
    return crc


def sht31_decode(data: bytes | bytearray | list[int]) -> dict[str, float]:
    """The 6 bytes of a measurement (T, CRC, RH, CRC) -> ``{temperature_c, humidity_pct}``."""
    d = _need(data, 6, "SHT31 measurement")
    for name, word, crc in (("temperature", d[0:2], d[2]), ("humidity", d[3:5], d[5])):
        want = crc8(word)
        if want != crc:
            raise ChipError(
                f"SHT31: {name} CRC mismatch (got 0x{crc:02x}, computed 0x{want:02x} over "
                f"{word.hex()}): a corrupted transfer"
            )
    st = (d[0] << 8) | d[1]
    srh = (d[3] << 8) | d[4]
    return {"temperature_c": -45.0 + 175.0 * st / 65535.0, "humidity_pct": 100.0 * srh / 65535.0}


# ---------------------------------------------------------------------------------------
# ADS1115
# ---------------------------------------------------------------------------------------
ADS1115_ADDRESS = 0x48
ADS1115_CONVERSION = 0x00
ADS1115_CONFIG = 0x01
Ads1115Gain = Literal["2/3", 1, 2, 4, 8, 16]
Ads1115Channel = Literal[0, 1, 2, 3, "0-1", "0-3", "1-3", "2-3"]
#: gain -> (PGA bits, full-scale volts)
ADS1115_GAINS: dict[str | int, tuple[int, float]] = {
    "2/3": (0b000, 6.144), 1: (0b001, 4.096), 2: (0b010, 2.048),
    4: (0b011, 1.024), 8: (0b100, 0.512), 16: (0b101, 0.256),
}  # fmt: skip
#: channel -> MUX bits (single-ended AINx vs GND, or a differential pair)
ADS1115_MUX: dict[str | int, int] = {
    "0-1": 0b000, "0-3": 0b001, "1-3": 0b010, "2-3": 0b011,
    0: 0b100, 1: 0b101, 2: 0b110, 3: 0b111,
}  # fmt: skip
ADS1115_RATES = {8: 0b000, 16: 0b001, 32: 0b010, 64: 0b011, 128: 0b100, 250: 0b101,
                 475: 0b110, 860: 0b111}  # fmt: skip


def ads1115_config(channel: str | int, gain: str | int, data_rate: int) -> int:
    """The config word that starts one single-shot conversion (comparator off)."""
    pga = ADS1115_GAINS[gain][0]
    return (
        (1 << 15)  # OS: start a conversion
        | (ADS1115_MUX[channel] << 12)
        | (pga << 9)
        | (1 << 8)  # MODE: single shot
        | (ADS1115_RATES[data_rate] << 5)
        | 0b11  # COMP_QUE: comparator disabled
    )


def ads1115_busy(config: bytes | bytearray | list[int]) -> bool:
    """True while the conversion runs (OS bit reads 0)."""
    d = _need(config, 2, "ADS1115 config")
    return not d[0] & 0x80


def ads1115_volts(data: bytes | bytearray | list[int], gain: str | int) -> tuple[int, float]:
    """The conversion register's two bytes (MSB first) -> (raw code, volts)."""
    d = _need(data, 2, "ADS1115 conversion")
    raw = struct.unpack(">h", d)[0]
    return raw, raw * ADS1115_GAINS[gain][1] / 32768.0


def ads1115_conversion_s(data_rate: int) -> float:
    """One conversion's time at ``data_rate`` samples/s (+10 %: the oscillator's spread)."""
    return 1.1 / data_rate


# ---------------------------------------------------------------------------------------
# raw registers
# ---------------------------------------------------------------------------------------
RawType = Literal["int8", "uint8", "int16", "uint16", "int32", "uint32"]
ByteOrder = Literal["big", "little"]
_FORMATS = {"int8": "b", "uint8": "B", "int16": "h", "uint16": "H", "int32": "i", "uint32": "I"}
RAW_SIZES = {name: struct.calcsize(fmt) for name, fmt in _FORMATS.items()}


def raw_decode(
    data: bytes | bytearray | list[int],
    type: RawType,
    byte_order: ByteOrder = "big",
    scale: float = 1.0,
    offset: float = 0.0,
) -> int | float:
    """Register bytes -> ``value * scale + offset`` (an int when scale 1 and offset 0)."""
    d = _need(data, RAW_SIZES[type], f"{type} register")
    value: int = struct.unpack((">" if byte_order == "big" else "<") + _FORMATS[type], d)[0]
    if scale == 1.0 and offset == 0.0:
        return value
    return value * scale + offset


def raw_encode(
    value: int | float,
    type: RawType,
    byte_order: ByteOrder = "big",
    scale: float = 1.0,
    offset: float = 0.0,
) -> bytes:
    """The inverse of ``raw_decode``: ``(value - offset) / scale`` rounded to the register;
    ``ValueError`` when that does not fit ``type``."""
    code = (value - offset) / scale if (scale != 1.0 or offset != 0.0) else value
    if isinstance(code, float):
        if not math.isfinite(code):
            raise ValueError(f"{value!r} is not a finite number")
        code = round(code)
    fmt = (">" if byte_order == "big" else "<") + _FORMATS[type]
    try:
        return struct.pack(fmt, code)
    except struct.error:
        bits = RAW_SIZES[type] * 8
        lo, hi = (0, 2**bits - 1) if type.startswith("u") else (-(2 ** (bits - 1)),
                                                                 2 ** (bits - 1) - 1)
        raise ValueError(f"{value!r} does not fit {type} ({lo}..{hi})") from None
