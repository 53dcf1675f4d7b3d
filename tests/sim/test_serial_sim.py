"""The serial driver (mechaway.drivers.serial) against the simulator's devices on ptys: a
bridge in both framings (hello, readings, commands acked or refused), a GPS's NMEA lines,
and a cable pulled and plugged back at the same link."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest
import pytest_asyncio
from mechaway_sim.runner import Simulator
from mechaway_sim.serialdev import nmea_checksum

from mechaway.drivers.base import parse_sections
from mechaway.drivers.serial import CommandFailed, Received, SerialDriver, SerialSettings
from mechaway.testing.flows import wait_until

from .conftest import StartSim

DEVICES = """
[[serial]]
name = "uno"
link = "uno"
protocol = "bridge"
framing = "{framing}"
device = "uno-sim"
every = "1s"
max_rate = 50
values = {{ air = "air_c", lux = "lux" }}
[[serial]]
name = "gps"
link = "gps"
protocol = "nmea"
every = "1s"
max_rate = 50
"""


def connect(sim: Simulator, name: str, framing: str) -> SerialDriver:
    raw = {"port": str(sim.run_dir / name), "framing": framing, "reconnect_min": 0.05,
           "reconnect_max": 0.2, "bridge": name == "uno"}  # fmt: skip
    parsed = parse_sections({"serial": {name: raw}})["serial"][name]
    assert isinstance(parsed, SerialSettings)
    return SerialDriver(name, parsed)


@pytest_asyncio.fixture(params=["line", "cobs"])
async def bridge(
    request: pytest.FixtureRequest, start_sim: StartSim
) -> AsyncIterator[tuple[Simulator, SerialDriver, list[Received]]]:
    # 1 simulated second per 1/50 s: readings at the device's max_rate
    sim = await start_sim(DEVICES.format(framing=request.param), speed=60.0)
    drv = connect(sim, "uno", request.param)
    got: list[Received] = []
    drv.subscribe(got.append)
    await drv.start()
    yield sim, drv, got
    await drv.close()


@pytest.mark.asyncio
async def test_the_bridge_says_hello_sends_readings_and_obeys(
    bridge: tuple[Simulator, SerialDriver, list[Received]],
) -> None:
    sim, drv, got = bridge
    await drv.wait_connected(5)
    await wait_until(lambda: drv.device is not None, 5, "the hello")
    assert drv.device is not None and drv.device["device"] == "uno-sim"
    await wait_until(lambda: sum(1 for r in got if r.message and r.message["t"] == "reading") >= 3,
                     5, "three readings")  # fmt: skip
    readings = [r.message for r in got if r.message and r.message["t"] == "reading"]
    assert all(r["values"]["air"] == pytest.approx(sim.world.signal("air_c"), abs=0.5)
               for r in readings)  # fmt: skip
    seqs = [r["seq"] for r in readings]
    assert seqs == sorted(seqs) and len(set(seqs)) == len(seqs)
    assert not [r for r in got if r.error]
    ack = await drv.command({"op": "pin", "pin": 13, "value": 1})
    assert ack["t"] == "ack"
    dev = sim.serial[0]
    assert dev.pins == {13: 1}
    with pytest.raises(CommandFailed) as info:
        await drv.command({"op": "pin", "pin": 99, "value": 1})
    assert info.value.code == "bad_pin"


@pytest.mark.asyncio
async def test_a_pulled_cable_is_noticed_and_the_device_followed_back(
    bridge: tuple[Simulator, SerialDriver, list[Received]],
) -> None:
    sim, drv, got = bridge
    dev = sim.serial[0]
    await drv.wait_connected(5)
    dev.unplug()
    await wait_until(lambda: not drv.connected, 5, "the unplug noticed")
    await asyncio.sleep(0.3)  # a few reopen attempts on a link that is gone
    assert drv.health.state == "connecting"
    assert "no such device" in str(drv.health.last_error)
    dev.plug()
    await drv.wait_connected(5)
    assert drv.extra_status()["device_path"] == dev.tty  # followed to the new pty
    n = len(got)
    await wait_until(lambda: any(r.message and r.message["t"] == "reading" for r in got[n:]),
                     5, "readings after the plug")  # fmt: skip
    assert drv.health.reconnects >= 1
    assert dev.boots == 2


@pytest.mark.asyncio
async def test_the_gps_sends_checked_nmea_lines(start_sim: StartSim) -> None:
    sim = await start_sim(DEVICES.format(framing="line"), speed=60.0)
    drv = connect(sim, "gps", "line")
    got: list[Received] = []
    drv.subscribe(got.append)
    await drv.start()
    try:
        await wait_until(lambda: len(got) >= 4, 5, "four sentences")
        lines = [r.frame.decode().rstrip("\r") for r in got if r.frame]
        assert {line[:6] for line in lines} == {"$GPGGA", "$GPRMC"}
        for line in lines:
            body, star, crc = line[1:].partition("*")
            assert star and crc == nmea_checksum(body)
        gga = next(line for line in lines if line.startswith("$GPGGA")).split(",")
        assert gga[3] == "N" and gga[5] == "E" and gga[6] == "1"
        assert 52.0 < int(gga[2][:2]) + float(gga[2][2:]) / 60 < 53.0
    finally:
        await drv.close()
