"""The Modbus driver (mechaway.drivers.modbus) against the simulator's pymodbus servers:
the SDM630, laid out by the driver's own profile, over TCP and over RTU on a pty; the PLC's
coils driving the model; the faults a device can have."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest
import pytest_asyncio
from mechaway_sim.runner import Simulator

from mechaway.drivers.base import parse_sections
from mechaway.drivers.modbus import ModbusDriver, ModbusSettings, profiles
from mechaway.drivers.modbus.decode import plan
from mechaway.drivers.modbus.driver import ModbusExceptionReply, ModbusTimeout
from mechaway.testing.flows import wait_until

from .conftest import StartSim

DEVICES = """
[[modbus]]
name = "plc"
transport = "tcp"
units = [{ unit = 1, device = "plc" }, { unit = 2, device = "sdm630" }]
[[modbus]]
name = "meter"
transport = "rtu"
link = "meter"
units = [{ unit = 1, device = "sdm630" }]
[[actuators]]
name = "heater"
input = "coil:plc:1:0"
heat_w = 2000
power_w = 2000
phase = 2
"""
FAST = {"timeout": 0.3, "reconnect_min": 0.05, "reconnect_max": 0.2,
        "unit_backoff_min": 0.1, "unit_backoff_max": 0.2}  # fmt: skip


def connect(sim: Simulator, name: str) -> ModbusDriver:
    where = sim.describe()["modbus"][name]
    raw: dict[str, Any] = dict(FAST)
    if where["transport"] == "tcp":
        host, port = where["at"].rsplit(":", 1)
        raw.update(host=host, port=int(port))
    else:
        raw.update(serial_port=where["at"], baudrate=115200)
    parsed = parse_sections({"modbus": {name: raw}})["modbus"][name]
    assert isinstance(parsed, ModbusSettings)
    return ModbusDriver(name, parsed)


@pytest_asyncio.fixture
async def sim(start_sim: StartSim) -> AsyncIterator[Simulator]:
    yield await start_sim(DEVICES)


async def read_profile(drv: ModbusDriver, unit: int) -> dict[str, Any]:
    """What ModbusReadNode does with profile eastron-sdm630: its merged requests."""
    prof = profiles.load("eastron-sdm630")
    values: dict[str, Any] = {}
    for span in plan(prof.reads, max_gap=prof.max_gap, max_registers=prof.max_registers):
        values.update(span.decode(await drv.read(unit, span.table, span.address, span.count)))
    return values


@pytest.mark.asyncio
@pytest.mark.parametrize(("server", "unit"), [("plc", 2), ("meter", 1)], ids=["tcp", "rtu"])
async def test_the_sdm630_answers_the_drivers_profile(sim: Simulator, server: str,
                                                      unit: int) -> None:  # fmt: skip
    drv = connect(sim, server)
    await drv.start()
    try:
        await drv.wait_connected(5)
        values = await read_profile(drv, unit)
        prof = profiles.load("eastron-sdm630")
        assert set(values) == {r.name for r in prof.reads}
        base = sim.sc.model.base_load_w
        assert values["power_l1"] == pytest.approx(base, abs=1.0)
        assert values["power_total"] == pytest.approx(3 * base, abs=1.0)
        assert values["voltage_l1"] == pytest.approx(230.0, abs=3.0)
        assert values["frequency"] == pytest.approx(50.0, abs=0.1)
        assert values["current_l1"] == pytest.approx(base / 0.97 / values["voltage_l1"], rel=0.02)
        assert drv.health.counters["exceptions"] == 0
        # the meter's limit: more than 80 registers in one request is refused (exception 3)
        with pytest.raises(ModbusExceptionReply) as info:
            await drv.read(unit, "input", 0, 81)
        assert info.value.code == 3
    finally:
        await drv.close()


@pytest.mark.asyncio
async def test_a_plc_coil_drives_the_model_and_the_meter_sees_it(sim: Simulator) -> None:
    drv = connect(sim, "plc")
    await drv.start()
    try:
        await drv.wait_connected(5)
        await drv.write(1, "coil", 0, [True])
        assert sim.world.model.levels["heater"] == 1.0
        assert await drv.read(1, "discrete", 0, 2) == [True, False]  # feedback contact
        meter = await read_profile(drv, 2)
        assert meter["power_l2"] == pytest.approx(sim.sc.model.base_load_w + 2000.0, abs=1.0)
        inputs = await drv.read(1, "input", 0, 8)
        air = inputs[0] - 65536 if inputs[0] > 32767 else inputs[0]
        assert air / 10 == pytest.approx(sim.world.signal("air_c"), abs=0.1)
        assert inputs[7] == 1  # the coils as a word
        assert await drv.read(1, "holding", 0, 2) == [180, 260]
        await drv.write(1, "holding", 0, [215])
        assert await drv.read(1, "holding", 0, 1) == [215]
        await drv.write(1, "coil", 0, [False])
        assert sim.world.model.levels["heater"] == 0.0
        with pytest.raises(ModbusExceptionReply) as info:
            await drv.read(1, "holding", 40, 1)  # outside the PLC's map
        assert info.value.code == 2
    finally:
        await drv.close()


FAULTS = """
[[faults]]
at = "+0s"
for = "1h"
target = "{target}"
kind = "{kind}"
code = 6
"""


@pytest.mark.asyncio
async def test_an_exception_fault_is_an_exception_reply_and_the_coil_stays(
    start_sim: StartSim,
) -> None:
    sim = await start_sim(DEVICES + FAULTS.format(target="plc", kind="exception"))
    drv = connect(sim, "plc")
    await drv.start()
    try:
        await drv.wait_connected(5)
        with pytest.raises(ModbusExceptionReply) as info:
            await drv.write(1, "coil", 0, [True])
        assert info.value.code == 6
        assert sim.world.model.levels["heater"] == 0.0  # refused: nothing switched
        assert drv.health.counters["exceptions"] == 1
        assert drv.connected  # an exception is an answer: the unit is alive
    finally:
        await drv.close()


@pytest.mark.asyncio
@pytest.mark.parametrize("server", ["plc", "meter"], ids=["tcp", "rtu"])
async def test_a_silent_server_times_out_and_answers_after(start_sim: StartSim,
                                                           server: str) -> None:  # fmt: skip
    # the fault: 0 to 1 h at 1800x, the first two seconds of the run
    sim = await start_sim(DEVICES + FAULTS.format(target=server, kind="silent"), speed=1800.0)
    drv = connect(sim, server)
    await drv.start()
    unit = 2 if server == "plc" else 1
    try:
        await drv.wait_connected(5)
        assert sim.world.fault(server, "silent") is not None
        with pytest.raises(ModbusTimeout):
            await drv.read(unit, "input", 0, 2)
        await wait_until(lambda: sim.world.fault(server, "silent") is None, 5, "the fault's end")
        await drv.wait_connected(5)

        async def answers() -> bool:
            try:
                await drv.read(unit, "input", 0, 2)
            except Exception:  # a timeout, or the late answer of a held request
                return False
            return True

        for _ in range(50):
            if await answers():
                break
        else:
            raise AssertionError(f"{server} does not answer after the fault")
        assert drv.health.counters["timeouts"] >= 1
    finally:
        await drv.close()
