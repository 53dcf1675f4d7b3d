"""The Modbus driver against a real pymodbus server, over TCP and over RTU on a pty pair:
every type and order, merging counted at the server, exception replies, CRC errors, a unit
that never answers, a server restart, half-open TCP, a queue behind a timeout, writes
while disconnected."""

from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import Callable
from typing import Any

import pytest
from pymodbus.simulator import DataType, SimData

from mechaway.drivers.base import parse_sections
from mechaway.drivers.modbus import (
    ModbusDriver,
    ModbusError,
    ModbusExceptionReply,
    ModbusTimeout,
    ReadSpec,
    plan,
)
from mechaway.errors import ConfigError, NotConnected

from .conftest import Rig, close_rig, make_rig, settings, units
from .modbus_sim import ModbusSim, bits, blocks, free_port, regs


async def until(cond: Callable[[], Any], timeout: float = 15.0, what: str = "") -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what or cond}")
        await asyncio.sleep(0.01)


def typed_unit() -> dict[int, Any]:
    """Unit 1 holding registers: every type in big/big order encoded by pymodbus itself,
    then the other orders of a float32 (123.456 = 0x42F6E979) and an int32 (-2)."""
    holding = [
        SimData(0, values=[-1234], datatype=DataType.INT16),
        SimData(1, values=[54321], datatype=DataType.UINT16),
        SimData(2, values=[-123456789], datatype=DataType.INT32),
        SimData(4, values=[3_000_000_000], datatype=DataType.UINT32),
        SimData(6, values=[-(2**40)], datatype=DataType.INT64),
        SimData(10, values=[2**63 + 5], datatype=DataType.UINT64),
        SimData(14, values=[3.5], datatype=DataType.FLOAT32),
        SimData(16, values=[-1e100], datatype=DataType.FLOAT64),
        SimData(20, values="ABCD", datatype=DataType.STRING),
        regs(22, [0x0100, 0xE979, 0x42F6, 0xF642, 0x79E9, 0x79E9, 0xF642, 0xFFFE, 0xFFFF]),
    ]
    return {1: blocks(
        coils=[bits(0, [True, False, True] + [False] * 13)],
        discrete=[bits(0, [False, False, True] + [False] * 13)],
        holding=holding,
        inputs=[SimData(0, values=[-7], datatype=DataType.INT32)],
    )}  # fmt: skip


TYPED_READS = [
    ReadSpec(name="i16", address=0, type="int16"),
    ReadSpec(name="u16", address=1, type="uint16"),
    ReadSpec(name="i32", address=2, type="int32"),
    ReadSpec(name="u32", address=4, type="uint32"),
    ReadSpec(name="i64", address=6, type="int64"),
    ReadSpec(name="u64", address=10, type="uint64"),
    ReadSpec(name="f32", address=14, type="float32"),
    ReadSpec(name="f64", address=16, type="float64"),
    ReadSpec(name="text", address=20, type="string", count=2),
    ReadSpec(name="on", address=22, type="bool"),
    ReadSpec(name="cdab", address=23, type="float32", word_order="little"),
    ReadSpec(name="badc", address=25, type="float32", byte_order="little"),
    ReadSpec(name="dcba", address=27, type="float32", byte_order="little", word_order="little"),
    ReadSpec(name="i32_cdab", address=29, type="int32", word_order="little"),
    ReadSpec(name="in_i32", address=0, table="input", type="int32"),
    ReadSpec(name="coil0", address=0, table="coil", type="bool"),
    ReadSpec(name="coils", address=1, table="coil", type="bool", count=2),
    ReadSpec(name="di2", address=2, table="discrete", type="bool"),
]


@pytest.mark.parametrize("kind", ["tcp", "rtu"])
@pytest.mark.asyncio
async def test_every_type_and_order_in_as_few_requests_as_the_tables_allow(kind: str) -> None:
    rig = await make_rig(kind, sim_units=typed_unit())
    try:
        spans = plan(TYPED_READS)
        assert len(spans) == 4  # one request per table
        payload: dict[str, Any] = {}
        for span in spans:
            payload.update(span.decode(await rig.driver.read(1, span.table, span.address,
                                                             span.count)))  # fmt: skip
        assert payload == {
            "i16": -1234, "u16": 54321, "i32": -123456789, "u32": 3_000_000_000,
            "i64": -(2**40), "u64": 2**63 + 5, "f32": 3.5, "f64": -1e100, "text": "ABCD",
            "on": True, "cdab": pytest.approx(123.456, rel=1e-6),
            "badc": pytest.approx(123.456, rel=1e-6), "dcba": pytest.approx(123.456, rel=1e-6),
            "i32_cdab": -2, "in_i32": -7, "coil0": True, "coils": [False, True], "di2": True,
        }  # fmt: skip
        # merging, counted at the server: four requests, the holding one of 31 registers
        assert [(r.fc, r.count) for r in rig.sim.requests] == [(1, 3), (2, 1), (3, 31), (4, 2)]
    finally:
        await close_rig(rig)


@pytest.mark.asyncio
async def test_exception_replies_are_counted_and_the_unit_stays_alive(rig: Rig) -> None:
    drv = rig.driver
    with pytest.raises(ModbusExceptionReply) as info:
        await drv.read(1, "holding", 58, 4)  # 60, 61 are not mapped
    assert info.value.code == 2 and "illegal data address" in str(info.value)
    rig.sim.fail[1] = 6
    with pytest.raises(ModbusExceptionReply, match="exception 6 \\(server device busy\\)"):
        await drv.read(1, "holding", 0, 1)
    del rig.sim.fail[1]
    assert await drv.read(1, "holding", 0, 2) == [100, 101]
    assert drv.health.counters["exceptions"] == 2
    assert drv.health.counters["replies"] == 1
    assert drv.status()["units"]["1"]["state"] == "ok" and drv.ready(1)


@pytest.mark.asyncio
async def test_a_gateway_saying_the_unit_did_not_answer_marks_it_dead(tcp_rig: Rig) -> None:
    drv = tcp_rig.driver
    tcp_rig.sim.fail[2] = 11
    with pytest.raises(ModbusExceptionReply) as info:
        await drv.read(2, "holding", 0, 1)
    assert info.value.code == 11
    assert drv.status()["units"]["2"]["state"] == "not answering"
    assert not drv.ready(2)  # backing off: the next probe is later
    assert drv.ready(1) and await drv.read(1, "holding", 0, 1) == [100]
    # the daemon's ``problems`` says so, though the link is connected
    (problem,) = drv.status()["problems"]
    assert problem.startswith("unit 2 not answering since ")
    from mechaway.daemon import problems

    assert problems({}, {"modbus.plc": drv.status()}, {}) == [f"modbus.plc: {problem}"]


@pytest.mark.asyncio
async def test_a_unit_that_never_answers_does_not_stall_the_others(rig: Rig) -> None:
    """Node-RED #446: one dead unit behind a gateway stalls every other unit."""
    drv = rig.driver
    rig.silence(2)
    log: list[tuple[int, bool]] = []

    def ok1() -> int:
        return sum(1 for u, ok in log if u == 1 and ok)

    async def poller(unit: int) -> None:
        while ok1() < 40:
            if drv.ready(unit):
                try:
                    await drv.read(unit, "holding", 0, 2)
                    log.append((unit, True))
                except ModbusError:
                    log.append((unit, False))
            await asyncio.sleep(0.01)

    await asyncio.wait_for(asyncio.gather(poller(1), poller(2)), 60)
    attempts2 = [i for i, (u, _) in enumerate(log) if u == 2]
    assert all(not ok for u, ok in log if u == 2)
    assert not any(not ok for u, ok in log if u == 1)
    # the dead unit was probed again (backoff), but far less often than unit 1 was polled
    assert 2 <= len(attempts2) <= 10, log
    # and never twice in a row: unit 1 was served between any two probes
    for a, b in itertools.pairwise(attempts2):
        assert any(u == 1 for u, _ in log[a + 1 : b]), log
    assert drv.health.counters["drops"] == 0 and drv.health.reconnects == 0
    assert drv.status()["units"]["2"]["state"] == "not answering"
    assert rig.heard(2) == len(attempts2)  # no retries for a unit known dead
    # it comes back: the next probe succeeds and it is polled normally again
    rig.sim.silent.discard(2)
    if rig.line is not None:
        rig.line.drop_units.discard(2)
    result: list[int] = []

    async def probe() -> bool:
        if drv.ready(2):
            try:
                result.extend(await drv.read(2, "holding", 0, 1))
            except ModbusError:
                return False
        return bool(result)

    deadline = time.monotonic() + 15
    while not await probe():
        assert time.monotonic() < deadline, "unit 2 never came back"
        await asyncio.sleep(0.02)
    assert result == [200] and drv.status()["units"]["2"]["state"] == "ok"


@pytest.mark.asyncio
async def test_requests_queued_behind_a_timeout_all_run_in_order(rig: Rig) -> None:
    """Node-RED #409/#165/#253: the request queue reset or frozen after a timeout."""
    drv = rig.driver
    rig.silence(2)
    calls = [(1, a) for a in range(5)] + [(2, 0)] + [(1, a) for a in range(5, 10)]
    results = await asyncio.wait_for(
        asyncio.gather(*(drv.read(u, "holding", a, 1) for u, a in calls), return_exceptions=True),
        30,
    )
    for (u, a), res in zip(calls, results, strict=True):
        if u == 2:
            assert isinstance(res, ModbusTimeout) and res.kind == "timeouts"
        else:
            assert res == [100 + a]
    served = [r.address for r in rig.sim.requests if r.unit == 1]
    assert served == list(range(10))  # every one, in the order asked, none lost


@pytest.mark.asyncio
async def test_a_server_restart_is_reconnected_and_requests_resume(tcp_rig: Rig) -> None:
    drv, sim = tcp_rig.driver, tcp_rig.sim
    assert await drv.read(1, "holding", 0, 1) == [100]
    await sim.stop()
    await until(lambda: not drv.connected, what="the driver to notice the restart")
    with pytest.raises(NotConnected):
        await drv.read(1, "holding", 0, 1)
    await sim.start_tcp(sim.port)
    await drv.wait_connected(15)
    assert await drv.read(1, "holding", 0, 1) == [100]
    assert drv.health.reconnects == 1 and drv.health.counters["not_connected"] == 1


@pytest.mark.asyncio
async def test_half_open_tcp_is_noticed_dropped_and_reconnected() -> None:
    """Node-RED #458: an unplugged cable never noticed, the node "active" forever."""
    rig = await make_rig("tcp", proxy=True, drop_after=3)
    drv, proxy = rig.driver, rig.proxy
    assert proxy is not None
    good = 0
    stop = asyncio.Event()

    async def poller() -> None:
        nonlocal good
        while not stop.is_set():
            if drv.connected and drv.ready(1):
                try:
                    await drv.read(1, "holding", 0, 1)
                    good += 1
                except (ModbusError, NotConnected):
                    pass
            await asyncio.sleep(0.01)

    task = asyncio.ensure_future(poller())
    try:
        await until(lambda: good >= 5, what="polls before the freeze")
        proxy.freeze()  # bytes stop, nothing closes
        await until(lambda: drv.health.counters["drops"] >= 1, 30, "the silent link to drop")
        assert drv.health.counters["timeouts"] >= 3
        assert drv.health.last_error is not None and "half-open" in drv.health.last_error
        proxy.thaw()
        before = good
        await until(lambda: good >= before + 5, 30, "polls after the cable is back")
        assert drv.health.reconnects >= 1 and proxy.connections >= 2
    finally:
        stop.set()
        await task
        await close_rig(rig)


@pytest.mark.asyncio
async def test_crc_errors_are_counted_and_retried() -> None:
    rig = await make_rig("rtu", retries=1)
    drv, line = rig.driver, rig.line
    assert line is not None
    try:
        line.corrupt = 1  # the first reply's CRC is broken, the retry's is not
        assert await drv.read(1, "holding", 0, 2) == [100, 101]
        assert drv.health.counters["crc_errors"] == 1 and drv.health.counters["replies"] == 1
        line.corrupt = 2  # both tries broken: an error naming the cause
        with pytest.raises(ModbusTimeout) as info:
            await drv.read(1, "holding", 0, 2)
        assert info.value.kind == "crc_errors" and "CRC" in str(info.value)
        assert drv.health.counters["crc_errors"] == 3 and drv.health.counters["timeouts"] == 0
    finally:
        await close_rig(rig)


@pytest.mark.asyncio
async def test_a_write_while_disconnected_is_refused_and_never_replayed() -> None:
    port = free_port()
    drv = ModbusDriver("t", settings(host="127.0.0.1", port=port))
    await drv.start()
    sim = ModbusSim(units())
    try:
        with pytest.raises(NotConnected):
            await drv.write(1, "holding", 0, [42])
        assert drv.health.counters["not_connected"] == 1
        await sim.start_tcp(port)
        await drv.wait_connected(15)
        assert await drv.read(1, "holding", 0, 1) == [100]  # the refused write never landed
        assert sim.count(fc=6) == 0 and sim.count(fc=16) == 0
        await drv.write(1, "holding", 0, [42])
        await drv.write(1, "holding", 1, [7, 8])
        await drv.write(1, "coil", 1, [True])
        await drv.write(1, "coil", 4, [True, True])
        assert await drv.read(1, "holding", 0, 3) == [42, 7, 8]
        assert await drv.read(1, "coil", 0, 6) == [True, True, True, True, True, True]
        assert [r.fc for r in sim.requests if r.fc in (5, 6, 15, 16)] == [6, 16, 5, 15]
        with pytest.raises(ValueError, match="read-only"):
            await drv.write(1, "input", 0, [1])
    finally:
        await drv.close()
        await sim.stop()


def test_settings_are_validated_with_located_errors() -> None:
    cases = [
        ({}, "modbus.t: give host (Modbus TCP) or serial_port (RTU)"),
        ({"host": "h", "serial_port": "/dev/x"}, "modbus.t: give host"),
        ({"serial_port": "/dev/x", "framer": "socket"}, "modbus.t: framer socket"),
        ({"host": "h", "timeout": 0}, "modbus.t.timeout: Expected `float` > 0"),
        ({"host": "h", "port": 70000}, "modbus.t.port: Expected `int` <= 65535"),
        ({"host": "h", "parity": "even"}, "modbus.t.parity: Invalid enum value 'even'"),
        ({"host": "h", "slave": 1}, "modbus.t: unknown key `slave`"),
        ({"host": "h", "unit_backoff_min": 9, "unit_backoff_max": 1},
         "modbus.t: unit_backoff_min must be <= unit_backoff_max"),
    ]  # fmt: skip
    for table, why in cases:
        with pytest.raises(ConfigError) as info:
            parse_sections({"modbus": {"t": table}})
        assert str(info.value).startswith(why), (str(info.value), why)
    assert settings(host="h").gap() == 0.0
    assert settings(serial_port="/dev/x", baudrate=9600).gap() == pytest.approx(3.5 * 10 / 9600)
    assert settings(serial_port="/dev/x", baudrate=115200).gap() == 0.00175
    assert settings(serial_port="/dev/x", frame_gap=0.01).gap() == 0.01


@pytest.mark.asyncio
async def test_status_has_the_common_shape_and_the_units(tcp_rig: Rig) -> None:
    drv = tcp_rig.driver
    await drv.read(1, "holding", 0, 1)
    st = drv.status()
    assert st["kind"] == "modbus" and st["name"] == "t" and st["state"] == "connected"
    assert st["transport"].startswith("tcp 127.0.0.1:")
    assert st["counters"]["requests"] == 1 and st["counters"]["replies"] == 1
    assert st["units"]["1"]["requests"] == 1
    await drv.close()
    assert drv.status()["state"] == "closed"
    await drv.close()  # idempotent
