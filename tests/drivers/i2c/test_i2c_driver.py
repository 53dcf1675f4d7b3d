"""The [i2c.NAME] driver and the chip readers against the SMBus-compatible fake: the bus's
thread, one transaction at a time, devices that stop answering and come back, a bus that
goes away, each chip's register sequence."""

from __future__ import annotations

import asyncio
import errno
import logging
import threading
import time
from collections.abc import AsyncIterator
from typing import Any

import pytest
import pytest_asyncio

from mechaway.drivers.base import parse_sections
from mechaway.drivers.i2c import DeviceNotAnswering, I2CDriver, I2CError, I2CSettings, chips
from mechaway.drivers.i2c.devices import (
    Ads1115Reader,
    Bme280Reader,
    RawReader,
    RawSpec,
    Sht31Reader,
    Tmp102Reader,
)
from mechaway.errors import ConfigError, NotConnected
from mechaway.testing.fake_i2c import (
    FakeADS1115,
    FakeBME280,
    FakeDevice,
    FakeSHT31,
    FakeSMBus,
    FakeTMP102,
)
from mechaway.testing.flows import wait_until

FAST: dict[str, Any] = {"reconnect_min": 0.01, "reconnect_max": 0.05}


@pytest_asyncio.fixture
async def bus() -> AsyncIterator[tuple[I2CDriver, FakeSMBus]]:
    fake = FakeSMBus()
    drv = I2CDriver("main", I2CSettings(**FAST), bus_factory=lambda s: fake)
    await drv.start()
    await drv.wait_connected(5)
    yield drv, fake
    await drv.close()


def test_sections_are_named_buses_with_located_errors() -> None:
    parsed = parse_sections({"i2c": {"main": {"bus": 1}, "aux": {"bus": 3, "retries": 0}}})
    assert parsed["i2c"]["aux"].bus == 3  # type: ignore[attr-defined]
    for raw, text in [
        ({"main": {"bus": 300}}, "m.toml: i2c.main.bus: Expected `int` <= 255"),
        ({"main": {"backend": "fake"}}, "m.toml: i2c.main.backend: Invalid enum value 'fake'"),
        ({"main": {"speed": 1}}, "m.toml: i2c.main: unknown key `speed`"),
    ]:
        with pytest.raises(ConfigError) as info:
            parse_sections({"i2c": raw}, "m.toml")
        assert str(info.value).startswith(text), str(info.value)


@pytest.mark.asyncio
async def test_a_missing_bus_is_retried_and_shown_not_raised() -> None:
    drv = I2CDriver("gone", I2CSettings(bus=97, **FAST))  # the real smbus2 factory
    await drv.start()
    await wait_until(lambda: drv.health.counters["connect_failures"] >= 2, what="retries")
    status = drv.status()
    assert status["state"] == "connecting" and "/dev/i2c-97" in status["last_error"]
    with pytest.raises(NotConnected, match=r"i2c\[gone\]: bus 97 is not open \(No such file"):
        await drv.transfer(0x48, lambda b: b.read_byte_data(0x48, 0))
    await drv.close()
    assert drv.status()["state"] == "closed"


@pytest.mark.asyncio
async def test_calls_run_on_the_bus_thread_one_transaction_at_a_time(
    bus: tuple[I2CDriver, FakeSMBus],
) -> None:
    drv, fake = bus
    fake.devices[0x20] = FakeDevice({0: 7})
    inside = 0
    peak = 0
    threads: set[str] = set()

    def slow(b: Any) -> int:
        nonlocal inside, peak
        inside += 1
        peak = max(peak, inside)
        threads.add(threading.current_thread().name)
        time.sleep(0.002)
        inside -= 1
        return int(b.read_byte_data(0x20, 0))

    loop_thread = threading.current_thread().name
    results = await asyncio.gather(*(drv.transfer(0x20, slow) for _ in range(8)))
    assert results == [7] * 8 and peak == 1
    assert len(threads) == 1 and loop_thread not in threads
    assert next(iter(threads)).startswith("mechaway-i2c[main]")
    assert drv.status()["counters"]["transactions"] == 8
    assert drv.status()["devices"]["0x20"]["transactions"] == 8


@pytest.mark.asyncio
async def test_no_answer_is_retried_counted_logged_once_and_recovers(
    bus: tuple[I2CDriver, FakeSMBus], caplog: pytest.LogCaptureFixture
) -> None:
    drv, fake = bus
    fake.devices[0x48] = FakeTMP102(-12.5)
    reader = Tmp102Reader(0x48)
    fake.fail[0x48] = errno.EREMOTEIO
    with caplog.at_level(logging.INFO, "mechaway.drivers.i2c"):
        for _ in range(3):
            with pytest.raises(DeviceNotAnswering, match=r"device 0x48 does not answer "
                               r"\(\[Errno 121\] .*; 2 attempts\)"):  # fmt: skip
                await reader.read(drv)
        fake.fail[0x48] = errno.EIO  # EIO is a silent device too
        with pytest.raises(DeviceNotAnswering, match=r"\[Errno 5\]"):
            await reader.read(drv)
        dev = drv.status()["devices"]["0x48"]
        assert dev["state"] == "no answer" and dev["no_answer"] == 4 and dev["failing"] == 4
        assert drv.status()["counters"]["retries"] == 4  # one retry per reading
        assert drv.status()["state"] == "connected"  # the bus is fine; one device is not
        del fake.fail[0x48]
        assert await reader.read(drv) == {"temperature_c": -12.5}
    lines = [r.getMessage() for r in caplog.records if "0x48" in r.getMessage()]
    assert len(lines) == 2, lines
    assert "device 0x48: no answer ([Errno 121]" in lines[0] and "logged once per burst" in lines[0]
    assert "device 0x48 answers again after 4 failed transactions" in lines[1]
    assert drv.status()["devices"]["0x48"]["state"] == "ok"


@pytest.mark.asyncio
async def test_a_retry_that_succeeds_is_not_a_failure(bus: tuple[I2CDriver, FakeSMBus]) -> None:
    drv, fake = bus
    fake.devices[0x48] = FakeTMP102(30.0)
    calls = 0

    def flaky(b: Any) -> list[int]:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise OSError(errno.EREMOTEIO, "Remote I/O error")
        return list(b.read_i2c_block_data(0x48, 0, 2))

    assert chips.tmp102_celsius(await drv.transfer(0x48, flaky)) == 30.0
    assert drv.status()["devices"]["0x48"]["no_answer"] == 0 and calls == 2


@pytest.mark.asyncio
async def test_a_bus_that_goes_away_is_reopened() -> None:
    devices: dict[int, FakeDevice] = {0x48: FakeTMP102(20.0)}
    opened: list[FakeSMBus] = []

    def open_bus(settings: I2CSettings) -> FakeSMBus:
        opened.append(FakeSMBus(devices=devices))
        return opened[-1]

    drv = I2CDriver("main", I2CSettings(**FAST), bus_factory=open_bus)
    await drv.start()
    await drv.wait_connected(5)
    assert await Tmp102Reader(0x48).read(drv) == {"temperature_c": 20.0}
    opened[0].closed = True  # the adapter vanished: EBADF on the next call
    with pytest.raises(NotConnected, match=r"the bus went away \(\[Errno 9\]"):
        await Tmp102Reader(0x48).read(drv)
    await wait_until(lambda: drv.health.reconnects == 1, what="the bus to be reopened")
    await drv.wait_connected(5)
    assert await Tmp102Reader(0x48).read(drv) == {"temperature_c": 20.0}
    assert len(opened) == 2 and opened[1].calls == 1
    await drv.close()
    assert opened[1].closed


@pytest.mark.asyncio
async def test_other_errors_are_i2c_errors_for_that_call(bus: tuple[I2CDriver, FakeSMBus]) -> None:
    drv, fake = bus
    fake.devices[0x10] = FakeDevice()
    fake.fail[0x11] = errno.EOPNOTSUPP
    with pytest.raises(I2CError, match=r"device 0x11: \[Errno 95\]"):
        await drv.transfer(0x11, lambda b: b.read_byte_data(0x11, 0))
    with pytest.raises(I2CError, match="over 32 bytes"):
        await drv.transfer(0x10, lambda b: b.read_i2c_block_data(0x10, 0, 40))
    assert drv.status()["counters"]["device_errors"] == 2
    assert drv.status()["devices"]["0x11"]["state"] == "error"


@pytest.mark.asyncio
async def test_bme280_forced_mode_calibration_once_and_wrong_chip(
    bus: tuple[I2CDriver, FakeSMBus],
) -> None:
    drv, fake = bus
    chip = fake.devices[0x76] = FakeBME280()
    reader = Bme280Reader(0x76, oversampling=2)
    for _ in range(3):
        out = await reader.read(drv)
        assert out["temperature_c"] == 25.08
        assert out["pressure_hpa"] == pytest.approx(1006.5325, abs=1e-4)
        assert 0 <= out["humidity_pct"] <= 100
    assert reader.setups == 1 and chip.measurements == 3
    reads_at = [t.reg for t in fake.history if t.op == "read_i2c_block_data"]
    assert reads_at.count(0x88) == 1 and reads_at.count(0xE1) == 1 and reads_at.count(0xF7) == 3
    writes = [(t.reg, t.data[0]) for t in fake.history if t.op == "write_byte_data"]
    assert writes[:2] == [(0xF2, 0b010), (0xF4, 0b010_010_01)]  # ctrl_hum before ctrl_meas
    reader.forget()  # as after a no-answer burst: set up again
    await reader.read(drv)
    assert reader.setups == 2
    fake.devices[0x77] = FakeBME280(chip_id=0x58)
    with pytest.raises(chips.ChipError, match=r"chip id 0x58 \(expected 0x60\): a BMP280"):
        await Bme280Reader(0x77).read(drv)
    assert fake.ops(0x77) == ["read_byte_data"]  # nothing written to a chip we do not know


@pytest.mark.asyncio
async def test_sht31_ads1115_and_raw_sequences(bus: tuple[I2CDriver, FakeSMBus]) -> None:
    drv, fake = bus
    sht = fake.devices[0x44] = FakeSHT31(celsius=-10.0, humidity=33.0)
    out = await Sht31Reader(0x44, "medium").read(drv)
    assert out["temperature_c"] == pytest.approx(-10.0, abs=0.01)
    assert out["humidity_pct"] == pytest.approx(33.0, abs=0.01)
    assert sht.commands == [0x240B]
    sht.corrupt = 1
    with pytest.raises(chips.ChipError, match="temperature CRC mismatch"):
        await Sht31Reader(0x44).read(drv)

    ads = fake.devices[0x48] = FakeADS1115(volts=(1.0, 0.25, -0.5, 3.3))
    ads.busy_reads = 2
    out = await Ads1115Reader(0x48, channel=3, gain=1, data_rate=860).read(drv)
    assert out["volts"] == pytest.approx(3.3, abs=0.000125) and out["channel"] == 3
    out = await Ads1115Reader(0x48, channel="0-1", gain=2).read(drv)
    assert out["volts"] == pytest.approx(0.75, abs=0.0000625)
    out = await Ads1115Reader(0x48, channel=3, gain=16).read(drv)  # clipped at +full scale
    assert out["raw"] == 32767
    assert ads.conversions == 3

    fake.devices[0x30] = FakeDevice({0x10: 0xFF, 0x11: 0x38, 0x20: 0x01, 0x21: 0x02,
                                     0x22: 0x03, 0x23: 0x04})  # fmt: skip
    raw = RawReader(0x30, [RawSpec("t", 0x10, "int16", "big", 0.1, 0.0),
                           RawSpec("n", 0x20, "uint32", "little")])  # fmt: skip
    assert await raw.read(drv) == {"t": pytest.approx(-20.0), "n": 0x04030201}


@pytest.mark.asyncio
async def test_the_default_bus_needs_no_section_and_others_do() -> None:
    from mechaway.drivers.base import Connections

    conns = Connections({})
    default = await conns.get(I2CDriver)  # bus 1, absent on this machine: retried, shown
    assert isinstance(default, I2CDriver) and default.settings.bus == 1
    with pytest.raises(KeyError, match=r"no \[i2c\.aux\] connection is configured"):
        await conns.get(I2CDriver, "aux")
    await conns.close()
