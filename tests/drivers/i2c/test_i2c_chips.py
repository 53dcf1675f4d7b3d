"""The pure chip decoders against datasheet values, an independent floating-point version
of the BME280 formulas, and hypothesis round trips for the raw register decoder."""

from __future__ import annotations

import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mechaway.drivers.i2c import chips
from mechaway.testing.fake_i2c import DATASHEET_CALIBRATION, calibration_bytes

#: a real BME280's trimming values and raw readings, with what the datasheet's double
#: formulas give for them (the values pimoroni/bme280-python tests with)
REAL = chips.Bme280Calibration(
    T1=28009, T2=25654, T3=50, P1=39145, P2=-10750, P3=3024, P4=5667, P5=-120, P6=-7,
    P7=15500, P8=-14600, P9=6000, H1=75, H2=376, H3=0, H4=286, H5=50, H6=30,
)  # fmt: skip
REAL_ADC = (529191, 326816, 30281)


# --- an independent reference: the datasheet's double-precision formulas (section 8.1) ---
def ref_t_fine(c: chips.Bme280Calibration, adc_t: int) -> float:
    v1 = (adc_t / 16384.0 - c.T1 / 1024.0) * c.T2
    v2 = (adc_t / 131072.0 - c.T1 / 8192.0) * (adc_t / 131072.0 - c.T1 / 8192.0) * c.T3
    return v1 + v2


def ref_pressure(c: chips.Bme280Calibration, t_fine: float, adc_p: int) -> float:
    v1 = t_fine / 2.0 - 64000.0
    v2 = v1 * v1 * c.P6 / 32768.0
    v2 = v2 + v1 * c.P5 * 2.0
    v2 = v2 / 4.0 + c.P4 * 65536.0
    v1 = (c.P3 * v1 * v1 / 524288.0 + c.P2 * v1) / 524288.0
    v1 = (1.0 + v1 / 32768.0) * c.P1
    p = 1048576.0 - adc_p
    p = (p - v2 / 4096.0) * 6250.0 / v1
    v1 = c.P9 * p * p / 2147483648.0
    v2 = p * c.P8 / 32768.0
    return p + (v1 + v2 + c.P7) / 16.0


def ref_humidity(c: chips.Bme280Calibration, t_fine: float, adc_h: int) -> float:
    h = t_fine - 76800.0
    h = (adc_h - (c.H4 * 64.0 + c.H5 / 16384.0 * h)) * (
        c.H2 / 65536.0 * (1.0 + c.H6 / 67108864.0 * h * (1.0 + c.H3 / 67108864.0 * h))
    )
    h = h * (1.0 - c.H1 * h / 524288.0)
    return min(100.0, max(0.0, h))


def data_bytes(adc_t: int, adc_p: int, adc_h: int) -> bytes:
    return bytes([adc_p >> 12, (adc_p >> 4) & 0xFF, (adc_p & 0xF) << 4,
                  adc_t >> 12, (adc_t >> 4) & 0xFF, (adc_t & 0xF) << 4,
                  adc_h >> 8, adc_h & 0xFF])  # fmt: skip


def test_bme280_datasheet_worked_example() -> None:
    """BMP280/BME280 datasheet: dig_T1 27504, dig_T2 26435, dig_T3 -1000, adc_T 519888 ->
    t_fine 128422, T 25.08 °C; dig_P1..P9 36477, -10685, 3024, 2855, 140, -7, 15500,
    -14600, 6000, adc_P 415148 -> p 100653.27 Pa (double formula). The 64-bit integer
    formula gives 25767233 / 256 = 100653.25 Pa (its resolution is 1/256 Pa)."""
    c = DATASHEET_CALIBRATION
    t_fine = chips.bme280_t_fine(c, 519888)
    assert t_fine == 128422
    assert chips.bme280_temperature(t_fine) == 2508
    q24_8 = chips.bme280_pressure(c, t_fine, 415148)
    assert q24_8 == 25767233
    assert q24_8 / 256 == pytest.approx(100653.27, abs=0.05)
    assert ref_pressure(c, ref_t_fine(c, 519888), 415148) == pytest.approx(100653.27, abs=0.005)
    out = chips.bme280_decode(c, data_bytes(519888, 415148, 0x8000))
    assert out == {"temperature_c": 25.08, "pressure_hpa": pytest.approx(1006.5325, abs=1e-4)}


def test_bme280_real_chip_values_agree_with_the_double_formulas() -> None:
    out = chips.bme280_decode(REAL, data_bytes(*REAL_ADC))
    assert out["temperature_c"] == pytest.approx(24.7894877676, abs=0.01)
    assert out["pressure_hpa"] == pytest.approx(1006.61517564, abs=0.01)  # 1 Pa
    assert out["humidity_pct"] == pytest.approx(68.66996648709039, abs=0.01)


@settings(max_examples=500, deadline=None)
@given(
    cal=st.sampled_from([DATASHEET_CALIBRATION, REAL]),
    adc_t=st.integers(400_000, 600_000),  # about -20..+60 °C with these calibrations
    adc_p=st.integers(250_000, 450_000),  # about 900..1250 hPa
    adc_h=st.integers(15_000, 45_000),
    h3=st.integers(0, 255),
    h6=st.integers(-128, 127),
)
def test_bme280_integer_formulas_match_the_double_ones(
    cal: chips.Bme280Calibration, adc_t: int, adc_p: int, adc_h: int, *, h3: int, h6: int
) -> None:
    c = chips.Bme280Calibration(**{**{f: getattr(cal, f) for f in cal.__slots__},
                                   "H3": h3, "H6": h6})  # fmt: skip
    t_fine = chips.bme280_t_fine(c, adc_t)
    ref_fine = ref_t_fine(c, adc_t)
    assert abs(t_fine - ref_fine) <= 26  # 0.005 °C (t_fine is 1/5120 °C): truncations
    assert chips.bme280_temperature(t_fine) / 100 == pytest.approx(ref_fine / 5120.0, abs=0.011)
    # pressure and humidity from the same t_fine: only their own arithmetic differs
    p = chips.bme280_pressure(c, t_fine, adc_p) / 256
    assert p == pytest.approx(ref_pressure(c, t_fine, adc_p), abs=1.0)  # Pa
    h = chips.bme280_humidity(c, t_fine, adc_h) / 1024
    assert h == pytest.approx(ref_humidity(c, t_fine, adc_h), abs=0.05)  # %RH


def test_bme280_calibration_layout_ids_and_bad_data() -> None:
    # H4 = 0x11E and H5 = 0x032 share 0xE5: E4 = 0x11, E5 = 0x2E, E6 = 0x03
    block2 = struct.pack("<hB", 376, 0) + bytes([0x11, 0x2E, 0x03]) + struct.pack("<b", 30)
    block1, _ = calibration_bytes(REAL)
    assert chips.bme280_calibration(block1, block2) == REAL
    neg = bytes([0x70, 0x01, 0x00, 0xFF, 0xFF, 0xFF, 0xE2])  # H4 = H5 = -1, H6 = -30
    cal = chips.bme280_calibration(block1, neg)
    assert (cal.H2, cal.H4, cal.H5, cal.H6) == (0x170, -1, -1, -30)
    chips.bme280_check_id(0x60)
    with pytest.raises(chips.ChipError, match=r"chip id 0x58 \(expected 0x60\): a BMP280, not"):
        chips.bme280_check_id(0x58)
    with pytest.raises(chips.ChipError, match="chip id 0xff"):
        chips.bme280_check_id(0xFF)
    with pytest.raises(chips.ChipError, match="calibration looks blank"):
        chips.bme280_calibration(bytes(26), bytes(7))
    with pytest.raises(chips.ChipError, match="expected 26 bytes, got 25"):
        chips.bme280_calibration(bytes(25), bytes(7))
    with pytest.raises(chips.ChipError, match="no temperature measurement"):
        chips.bme280_decode(REAL, data_bytes(0x80000, 0x80000, 0x8000))
    assert set(chips.bme280_decode(REAL, data_bytes(REAL_ADC[0], 0x80000, 0x8000))) == {
        "temperature_c"
    }  # pressure and humidity skipped (oversampling 0) are left out


@settings(max_examples=200, deadline=None)
@given(st.builds(
    chips.Bme280Calibration,
    T1=st.integers(1, 65535), T2=st.integers(-32768, 32767), T3=st.integers(-32768, 32767),
    P1=st.integers(1, 65535), P2=st.integers(-32768, 32767), P3=st.integers(-32768, 32767),
    P4=st.integers(-32768, 32767), P5=st.integers(-32768, 32767), P6=st.integers(-32768, 32767),
    P7=st.integers(-32768, 32767), P8=st.integers(-32768, 32767), P9=st.integers(-32768, 32767),
    H1=st.integers(0, 255), H2=st.integers(-32768, 32767), H3=st.integers(0, 255),
    H4=st.integers(-2048, 2047), H5=st.integers(-2048, 2047), H6=st.integers(-128, 127),
))  # fmt: skip
def test_bme280_calibration_round_trips_every_field(cal: chips.Bme280Calibration) -> None:
    assert chips.bme280_calibration(*calibration_bytes(cal)) == cal


def test_bme280_forced_mode_registers() -> None:
    assert chips.bme280_ctrl(1) == (0b001, 0b001_001_01)
    assert chips.bme280_ctrl(16) == (0b101, 0b101_101_01)
    assert chips.bme280_measure_s(1) == pytest.approx(0.0093)  # datasheet 9.1: 9.3 ms


@pytest.mark.parametrize(("data", "celsius"), [
    # TMP102 datasheet table 5 (12-bit) ...
    ("7ff0", 127.9375), ("6400", 100.0), ("5000", 80.0), ("4b00", 75.0), ("3200", 50.0),
    ("1900", 25.0), ("0040", 0.25), ("0000", 0.0), ("ffc0", -0.25), ("e700", -25.0),
    ("c900", -55.0),
    # ... and table 6 (13-bit, extended mode: bit 0 of the second byte set)
    ("4b01", 150.0), ("3201", 100.0), ("0c81", 25.0), ("0001", 0.0), ("f381", -25.0),
    ("e481", -55.0),
])  # fmt: skip
def test_tmp102_datasheet_values(data: str, celsius: float) -> None:
    assert chips.tmp102_celsius(bytes.fromhex(data)) == celsius


def test_sht31_crc_and_conversion() -> None:
    assert chips.crc8(b"\xbe\xef") == 0x92  # the datasheet's CRC example
    assert chips.crc8(b"\x00\x00") == 0x81
    out = chips.sht31_decode(bytes([0x66, 0x66, chips.crc8(b"\x66\x66"),
                                    0x80, 0x00, chips.crc8(b"\x80\x00")]))  # fmt: skip
    assert out["temperature_c"] == pytest.approx(-45 + 175 * 0x6666 / 65535)
    assert out["temperature_c"] == pytest.approx(25.0, abs=0.001)
    assert out["humidity_pct"] == pytest.approx(50.0, abs=0.001)
    assert chips.sht31_decode(bytes([0, 0, 0x81, 0xFF, 0xFF, 0xAC])) == {
        "temperature_c": -45.0, "humidity_pct": 100.0
    }  # fmt: skip
    with pytest.raises(chips.ChipError,
        match=r"temperature CRC mismatch \(got 0x00, computed 0x92",
    ):
        chips.sht31_decode(bytes([0xBE, 0xEF, 0x00, 0, 0, 0x81]))
    with pytest.raises(chips.ChipError, match="humidity CRC mismatch"):
        chips.sht31_decode(bytes([0xBE, 0xEF, 0x92, 0, 0, 0x80]))


@given(st.binary(max_size=8))
def test_crc8_table_matches_the_bitwise_definition(data: bytes) -> None:
    crc = 0xFF
    for byte in data:
        crc ^= byte
        for _ in range(8):
            crc = ((crc << 1) ^ 0x31) & 0xFF if crc & 0x80 else (crc << 1) & 0xFF
    assert chips.crc8(data) == crc


def test_ads1115_config_words_and_scaling() -> None:
    # AIN0 vs GND, ±4.096 V, single shot, 128 SPS, comparator off: the usual 0xC383
    assert chips.ads1115_config(0, 1, 128) == 0xC383
    assert chips.ads1115_config("0-1", 2, 860) == 0b1_000_010_1_111_00011
    assert chips.ads1115_config(3, 16, 8) == 0b1_111_101_1_000_00011
    raw, volts = chips.ads1115_volts(b"\x7f\xff", 1)
    assert raw == 32767 and volts == pytest.approx(4.096 * 32767 / 32768)
    assert chips.ads1115_volts(b"\x80\x00", 1) == (-32768, -4.096)
    assert chips.ads1115_volts(b"\x00\x01", 16)[1] == pytest.approx(7.8125e-6)  # LSB, table 3
    assert chips.ads1115_volts(b"\x00\x01", "2/3")[1] == pytest.approx(187.5e-6)
    assert chips.ads1115_busy(b"\x43\x83") and not chips.ads1115_busy(b"\xc3\x83")


INT_RANGES = {"int8": (-128, 127), "uint8": (0, 255), "int16": (-32768, 32767),
              "uint16": (0, 65535), "int32": (-(2**31), 2**31 - 1),
              "uint32": (0, 2**32 - 1)}  # fmt: skip


@st.composite
def typed_ints(draw: st.DrawFn) -> tuple[chips.RawType, int]:
    t = draw(st.sampled_from(sorted(INT_RANGES)))
    lo, hi = INT_RANGES[t]
    return t, draw(st.integers(lo, hi))  # type: ignore[return-value]


@given(typed_ints(), st.sampled_from(["big", "little"]))
def test_raw_integers_round_trip(tv: tuple[chips.RawType, int], order: chips.ByteOrder) -> None:
    t, v = tv
    data = chips.raw_encode(v, t, order)
    assert len(data) == chips.RAW_SIZES[t]
    assert chips.raw_decode(data, t, order) == v
    assert chips.raw_decode(data[::-1], t, "big" if order == "little" else "little") == v


@given(
    typed_ints(), st.sampled_from(["big", "little"]),
    st.floats(0.001, 1000, allow_nan=False), st.floats(-1e4, 1e4, allow_nan=False),
)  # fmt: skip
def test_raw_scaled_values_round_trip(
    tv: tuple[chips.RawType, int], order: chips.ByteOrder, scale: float, offset: float
) -> None:
    t, code = tv
    value = chips.raw_decode(chips.raw_encode(code, t, order), t, order, scale, offset)
    assert value == pytest.approx(code * scale + offset)
    assert chips.raw_decode(chips.raw_encode(value, t, order, scale, offset), t, order) == code


def test_raw_refuses_what_does_not_fit() -> None:
    assert chips.raw_decode(b"\x01\x02", "uint16", "big") == 0x0102
    assert chips.raw_decode(b"\x01\x02", "uint16", "little") == 0x0201
    assert chips.raw_decode(b"\xff\xfe", "int16", "big", 0.1, 5) == pytest.approx(4.8)
    with pytest.raises(ValueError, match=r"256 does not fit uint8 \(0\.\.255\)"):
        chips.raw_encode(256, "uint8")
    with pytest.raises(ValueError, match=r"-1 does not fit uint32"):
        chips.raw_encode(-1, "uint32")
    with pytest.raises(ValueError, match="not a finite number"):
        chips.raw_encode(float("nan"), "int16", scale=0.5)
    with pytest.raises(chips.ChipError, match="int32 register: expected 4 bytes, got 3"):
        chips.raw_decode(b"\x00\x00\x00", "int32")
