"""The I2C driver and its chip readers (mechaway.drivers.i2c) against the simulator's chips
over its socket: ``[i2c.NAME] backend = "sim"``, nothing in the driver faked."""

from __future__ import annotations

import errno
import statistics
from collections.abc import AsyncIterator
from typing import Any

import pytest
import pytest_asyncio
from hypothesis import given
from hypothesis import strategies as st
from mechaway_sim.i2c import CALIBRATION, bme280_adc, calibration_bytes
from mechaway_sim.runner import Simulator

from mechaway.drivers.base import parse_sections
from mechaway.drivers.i2c import DeviceNotAnswering, I2CDriver, I2CSettings, chips
from mechaway.drivers.i2c.devices import (
    Ads1115Reader,
    Bme280Reader,
    Sht31Reader,
    Tmp102Reader,
)
from mechaway.drivers.i2c.sim import SimSMBus
from mechaway.errors import NotConnected
from mechaway.testing.flows import wait_until

from .conftest import StartSim

CHIPS = """
[[i2c]]
name = "air"
chip = "bme280"
[[i2c]]
name = "leaf"
chip = "sht31"
[[i2c]]
name = "bench"
chip = "tmp102"
address = 0x49
[[i2c]]
name = "soil"
chip = "ads1115"
signals = { ain0 = "soil_pct", ain1 = "air_c" }
volts_per_unit = { ain0 = 0.03, ain1 = 0.01 }
[[faults]]
at = "+1h"
for = "1h"
target = "air"
kind = "silent"
"""


def settings(sim: Simulator, **kw: Any) -> I2CSettings:
    raw = {"backend": "sim", "bus": 1, "sim_socket": sim.socket_path,
           "reconnect_min": 0.02, "reconnect_max": 0.1, **kw}  # fmt: skip
    parsed = parse_sections({"i2c": {"air": raw}})["i2c"]["air"]
    assert isinstance(parsed, I2CSettings)
    return parsed


@pytest_asyncio.fixture
async def rig(start_sim: StartSim) -> AsyncIterator[tuple[Simulator, I2CDriver]]:
    sim = await start_sim(CHIPS)
    drv = I2CDriver("air", settings(sim))
    await drv.start()
    await drv.wait_connected(5)
    yield sim, drv
    await drv.close()


@pytest.mark.asyncio
async def test_each_reader_reads_the_value_the_model_holds(
    rig: tuple[Simulator, I2CDriver],
) -> None:
    sim, drv = rig
    sig = sim.world.sync().signals
    bme = await Bme280Reader(0x76, oversampling=2).read(drv)
    assert bme["temperature_c"] == pytest.approx(sig["air_c"], abs=0.011)
    assert bme["pressure_hpa"] == pytest.approx(sig["pressure_hpa"], abs=0.01)
    assert bme["humidity_pct"] == pytest.approx(sig["air_rh"], abs=0.01)
    sht = await Sht31Reader(0x44).read(drv)  # its CRCs are checked by the decoder
    assert sht["temperature_c"] == pytest.approx(sig["air_c"], abs=0.01)
    assert sht["humidity_pct"] == pytest.approx(sig["air_rh"], abs=0.01)
    tmp = await Tmp102Reader(0x49).read(drv)
    assert tmp["temperature_c"] == pytest.approx(sig["air_c"], abs=0.0625)
    ads = await Ads1115Reader(0x48, channel=0, gain=1).read(drv)
    assert ads["volts"] == pytest.approx(sig["soil_pct"] * 0.03, abs=0.001)
    diff = await Ads1115Reader(0x48, channel="0-1", gain="2/3").read(drv)
    assert diff["volts"] == pytest.approx(sig["soil_pct"] * 0.03 - sig["air_c"] * 0.01, abs=0.002)
    assert drv.health.counters["transactions"] >= 10


@pytest.mark.asyncio
async def test_the_chips_behave_like_the_parts(rig: tuple[Simulator, I2CDriver]) -> None:
    sim, drv = rig
    # BME280: id, calibration block, data 'skipped' until the first measurement
    ident, b1, b2, data = await drv.transfer(0x76, lambda b: (
        b.read_byte_data(0x76, chips.BME280_REG_ID), b.read_i2c_block_data(0x76, 0x88, 26),
        b.read_i2c_block_data(0x76, 0xE1, 7), b.read_i2c_block_data(0x76, 0xF7, 8)))  # fmt: skip
    assert ident == 0x60
    assert chips.bme280_calibration(b1, b2) == CALIBRATION
    with pytest.raises(chips.ChipError, match="no temperature measurement"):
        chips.bme280_decode(CALIBRATION, data)
    # SHT31: a read before a measurement, or before it is done, is NACKed
    with pytest.raises(DeviceNotAnswering):
        await drv.transfer(0x44, lambda b: b.read_byte(0x44))
    # TMP102 in extended (13-bit) mode
    await drv.transfer(0x49, lambda b: b.write_i2c_block_data(0x49, 1, [0x60, 0xB0]))
    word = await drv.transfer(0x49, lambda b: b.read_i2c_block_data(0x49, 0, 2))
    assert word[1] & 1
    assert chips.tmp102_celsius(word) == pytest.approx(sim.world.signal("air_c"), abs=0.07)
    # an address nobody answers at: errno 121, as i2c-dev says for a NACK
    with pytest.raises(DeviceNotAnswering, match="Errno 121"):
        await drv.transfer(0x50, lambda b: b.read_byte_data(0x50, 0))


@pytest.mark.asyncio
async def test_a_silent_sensor_is_not_answering_then_is_set_up_again(
    start_sim: StartSim,
) -> None:
    sim = await start_sim(CHIPS, speed=3600.0)  # the fault: +1 h for 1 h = 1 s to 2 s
    drv = I2CDriver("air", settings(sim, retries=0))
    await drv.start()
    try:
        await drv.wait_connected(5)
        reader = Bme280Reader(0x76)
        await reader.read(drv)
        await wait_until(lambda: sim.world.fault("air", "silent") is not None, 5, "the fault")
        with pytest.raises(DeviceNotAnswering):
            await reader.read(drv)
        assert drv.devices[0x76].state == "no answer"
        reader.forget()  # as the node does: the calibration is read again after
        await wait_until(lambda: sim.world.fault("air", "silent") is None, 5, "its end")
        values = await reader.read(drv)
        assert reader.setups == 2
        assert drv.devices[0x76].state == "ok"
        assert values["temperature_c"] == pytest.approx(sim.world.signal("air_c"), abs=0.5)
    finally:
        await drv.close()


@pytest.mark.asyncio
async def test_noise_spreads_the_readings(start_sim: StartSim) -> None:
    sim = await start_sim(CHIPS.replace('kind = "silent"', 'kind = "noise"\nsigma = 0.5')
                          .replace('at = "+1h"', 'at = "+0s"'))  # fmt: skip
    drv = I2CDriver("air", settings(sim))
    await drv.start()
    try:
        await drv.wait_connected(5)
        noisy = Bme280Reader(0x76)  # the fault's target
        temps = [(await noisy.read(drv))["temperature_c"] for _ in range(30)]
        assert statistics.stdev(temps) > 0.2
        calm = Tmp102Reader(0x49)  # another device: no noise
        assert statistics.pstdev([(await calm.read(drv))["temperature_c"] for _ in range(5)]) == 0
    finally:
        await drv.close()


@pytest.mark.asyncio
async def test_a_simulator_that_goes_away_is_a_lost_bus_then_reopened(
    start_sim: StartSim,
) -> None:
    sim = await start_sim(CHIPS)
    drv = I2CDriver("air", settings(sim))
    await drv.start()
    try:
        await drv.wait_connected(5)
        await sim.socket.close()
        with pytest.raises(NotConnected):
            await drv.transfer(0x76, lambda b: b.read_byte_data(0x76, 0xD0))
        await wait_until(lambda: drv.health.state != "connected", 5, "the bus seen lost")
        assert "went away" in str(drv.health.last_error)
        await sim.socket.start()
        await drv.wait_connected(5)
        assert await drv.transfer(0x76, lambda b: b.read_byte_data(0x76, 0xD0)) == 0x60
        assert drv.health.reconnects >= 1
    finally:
        await drv.close()


def test_no_simulator_is_an_oserror_naming_the_socket(tmp_path: Any) -> None:
    with pytest.raises(OSError) as info:
        SimSMBus(1, str(tmp_path / "none.sock"))
    assert info.value.errno == errno.ENOENT
    assert "none.sock" in str(info.value) and "mechaway-sim run" in str(info.value)


@given(st.floats(-40, 85), st.floats(300, 1100), st.floats(0, 100))
def test_the_compensation_is_inverted_to_the_chips_resolution(t: float, p: float, h: float) -> None:
    """The raw ADC values the simulated BME280 holds decode, with the datasheet's
    compensation and its calibration, to what the model says."""
    adc = bme280_adc(CALIBRATION, t, p, h)
    b1, b2 = calibration_bytes(CALIBRATION)
    cal = chips.bme280_calibration(b1, b2)
    t_fine = chips.bme280_t_fine(cal, adc[0])
    assert chips.bme280_temperature(t_fine) / 100 == pytest.approx(t, abs=0.0051)
    assert chips.bme280_pressure(cal, t_fine, adc[1]) / 25600 == pytest.approx(p, abs=0.01)
    assert chips.bme280_humidity(cal, t_fine, adc[2]) / 1024 == pytest.approx(h, abs=0.01)
