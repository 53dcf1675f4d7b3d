"""I2C nodes through real flows, on the SMBus-compatible fake: every chip, a device that
stops answering and comes back, a wrong chip id, writes and bad payloads."""

from __future__ import annotations

import errno
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import pytest
import pytest_asyncio

from mechaway.drivers.i2c import I2CDriver, I2CSettings, chips
from mechaway.errors import FlowError
from mechaway.flow.validate import validate
from mechaway.nodes.context import Services
from mechaway.runtime.engine import Engine
from mechaway.testing import flows
from mechaway.testing.fake_i2c import (
    FakeADS1115,
    FakeBME280,
    FakeDevice,
    FakeSHT31,
    FakeSMBus,
    FakeTMP102,
)
from mechaway.testing.flows import edge, node, wait_until


@dataclass
class Rig:
    engine: Engine
    fake: FakeSMBus
    conns: dict[str, I2CDriver] = field(default_factory=dict)


@pytest_asyncio.fixture
async def rig() -> AsyncIterator[Rig]:
    fake = FakeSMBus()
    conns: dict[str, I2CDriver] = {}

    async def get(name: str) -> I2CDriver:  # shared per name, as the daemon's Connections
        if name not in conns:
            conns[name] = I2CDriver(name, I2CSettings(reconnect_min=0.01, reconnect_max=0.05),
                                    bus_factory=lambda s: fake)  # fmt: skip
            await conns[name].start()
            await conns[name].wait_connected(5)
        return conns[name]

    engine = Engine(Services(connections={"i2c": get}), stop_timeout=2.0)
    yield Rig(engine, fake, conns)
    await engine.stop()
    for c in conns.values():
        await c.close()


def reader_flow(fid: str, **params: Any) -> dict[str, Any]:
    return flows.doc(
        fid,
        [node("r", "I2CReadNode", **params), node("got", "CollectNode"),
         node("bad", "CollectNode")],
        [edge("r", "got"), edge("r", "bad", "error")],
    )  # fmt: skip


@pytest.mark.asyncio
async def test_each_chip_through_a_flow(rig: Rig) -> None:
    rig.fake.devices.update({
        0x48: FakeTMP102(-7.25), 0x76: FakeBME280(), 0x44: FakeSHT31(31.5, 62.0),
        0x49: FakeADS1115(volts=(0.0, 1.5, 0.0, 0.0)),
        0x30: FakeDevice({0x00: 0x01, 0x01: 0xF4}),
    })  # fmt: skip
    docs: dict[str, dict[str, Any]] = {
        "tmp": dict(device="tmp102", interval=0.05),
        "bme": dict(device="bme280", interval=0.05, oversampling=4),
        "sht": dict(device="sht31", interval=0.05),
        "adc": dict(device="ads1115", address=0x49, channel=1, gain=2, data_rate=860,
                    interval=0.05),
        "raw": dict(device="raw", address=0x30, interval=0.05, topic="tank/level",
                    reads=[{"name": "level_cm", "register": 0, "type": "uint16",
                            "scale": 0.1}]),
    }  # fmt: skip
    for fid, params in docs.items():
        await flows.deploy(rig.engine, reader_flow(fid, **params))
    await wait_until(lambda: all(len(flows.got(f, "got")) >= 2 for f in docs), what="readings")
    first = {f: flows.got(f, "got")[0] for f in docs}
    assert first["tmp"]["payload"] == {"temperature_c": -7.25}
    assert first["tmp"]["topic"] == "i2c/default/0x48" and first["tmp"]["address"] == 0x48
    assert first["tmp"]["device"] == "tmp102" and first["tmp"]["connection"] == "default"
    assert first["bme"]["payload"]["temperature_c"] == 25.08
    assert first["bme"]["payload"]["pressure_hpa"] == pytest.approx(1006.5325, abs=1e-4)
    assert first["sht"]["payload"] == {"temperature_c": pytest.approx(31.5, abs=0.01),
                                       "humidity_pct": pytest.approx(62.0, abs=0.01)}  # fmt: skip
    assert first["adc"]["payload"]["volts"] == pytest.approx(1.5, abs=0.0001)
    assert first["raw"]["payload"] == {"level_cm": pytest.approx(50.0)}
    assert first["raw"]["topic"] == "tank/level"
    for f in docs:
        assert flows.got(f, "bad") == []
        assert flows.stats(rig.engine, f, "r")["errors"] == 0
    assert flows.stats(rig.engine, "bme", "r")["readings"] >= 2
    assert rig.conns["default"].status()["devices"]["0x76"]["state"] == "ok"


@pytest.mark.asyncio
async def test_no_answer_is_counted_each_poll_reported_once_and_recovers(rig: Rig) -> None:
    chip = rig.fake.devices[0x76] = FakeBME280()
    await flows.deploy(rig.engine, reader_flow("gh", device="bme280", interval=0.02))
    await wait_until(lambda: len(flows.got("gh", "got")) >= 1, what="a first reading")
    rig.fake.fail[0x76] = errno.EREMOTEIO  # unplugged
    await wait_until(lambda: flows.stats(rig.engine, "gh", "r")["errors"] >= 4, what="failures")
    bad = flows.got("gh", "bad")
    assert len(bad) == 1  # reported once for the burst
    assert bad[0]["error"]["type"] == "DeviceNotAnswering"
    assert "device 0x76 does not answer ([Errno 121]" in bad[0]["error"]["message"]
    conn = rig.conns["default"].status()
    assert conn["devices"]["0x76"]["state"] == "no answer"
    assert conn["devices"]["0x76"]["no_answer"] >= 4 and conn["counters"]["no_answer"] >= 4
    assert flows.stats(rig.engine, "gh", "r")["failures"]["DeviceNotAnswering"] >= 4
    # another chip plugged in its place: its calibration is read, readings resume with it
    other = chips.Bme280Calibration(
        T1=28009, T2=25654, T3=50, P1=39145, P2=-10750, P3=3024, P4=5667, P5=-120, P6=-7,
        P7=15500, P8=-14600, P9=6000, H1=75, H2=376, H3=0, H4=286, H5=50, H6=30,
    )  # fmt: skip
    rig.fake.devices[0x76] = FakeBME280(cal=other, adc=chip.adc)
    calibration_reads = sum(1 for t in rig.fake.history if t.reg == 0x88)
    before = len(flows.got("gh", "got"))
    del rig.fake.fail[0x76]
    await wait_until(lambda: len(flows.got("gh", "got")) >= before + 2, what="readings again")
    assert sum(1 for t in rig.fake.history if t.reg == 0x88) == calibration_reads + 1
    assert flows.got("gh", "got")[0]["payload"]["temperature_c"] == 25.08
    assert flows.got("gh", "got")[-1]["payload"]["temperature_c"] == 21.94  # its own trimming
    assert len(flows.got("gh", "bad")) == 1
    assert rig.conns["default"].status()["devices"]["0x76"]["state"] == "ok"


@pytest.mark.asyncio
async def test_a_wrong_chip_id_is_a_clear_error(rig: Rig) -> None:
    rig.fake.devices[0x77] = FakeBME280(chip_id=0x58)
    await flows.deploy(rig.engine, reader_flow("id", device="bme280", address=0x77,
                                               interval=0.02))  # fmt: skip
    await wait_until(lambda: flows.stats(rig.engine, "id", "r")["errors"] >= 3, what="failures")
    bad = flows.got("id", "bad")
    assert len(bad) == 1 and bad[0]["error"]["type"] == "ChipError"
    assert bad[0]["error"]["message"] == (
        "BME280: chip id 0x58 (expected 0x60): a BMP280, not a BME280"
    )
    assert flows.got("id", "got") == []
    assert "write_byte_data" not in rig.fake.ops(0x77)  # a chip we do not know is left alone


@pytest.mark.asyncio
async def test_sht31_crc_errors_are_counted_and_the_next_reading_is_good(rig: Rig) -> None:
    sht = rig.fake.devices[0x44] = FakeSHT31(20.0, 50.0)
    sht.corrupt = 3
    await flows.deploy(rig.engine, reader_flow("crc", device="sht31", interval=0.02))
    await wait_until(lambda: len(flows.got("crc", "got")) >= 1, what="a good reading")
    assert flows.stats(rig.engine, "crc", "r")["failures"] == {"ChipError": 3}
    assert len(flows.got("crc", "bad")) == 1
    assert "temperature CRC mismatch" in flows.got("crc", "bad")[0]["error"]["message"]


def test_read_params_are_checked_at_validation() -> None:
    cases: list[tuple[dict[str, Any], str]] = [
        (dict(device="raw", address=0x30), "device raw needs reads"),
        (dict(device="raw", reads=[{"name": "a", "register": 1}]), "device raw needs an address"),
        (dict(device="tmp102", reads=[{"name": "a", "register": 1}]), "reads is for device raw"),
        (dict(device="raw", address=0x30, reads=[{"name": "a", "register": 1},
                                                 {"name": "a", "register": 2}]),
         "names must be unique"),
        (dict(device="bme280", address=0x80), "params.address: expected `int` <= 119"),
        (dict(device="ads1115", gain=3), "params.gain: invalid value 3"),
        (dict(device="raw", address=0x30, reads=[{"name": "a", "register": 1, "type": "f32"}]),
         "params.reads[0].type: invalid value 'f32'"),
        (dict(device="lm75"), "params.device: invalid value 'lm75'"),
    ]  # fmt: skip
    for params, text in cases:
        with pytest.raises(FlowError) as info:
            validate(reader_flow("v", **params))
        assert text in str(info.value), (params, str(info.value))


@pytest.mark.asyncio
async def test_write_node_registers_numbers_and_bad_payloads(rig: Rig) -> None:
    dac = rig.fake.devices[0x60] = FakeDevice()
    docs: dict[str, dict[str, Any]] = {
        "wb": {"address": 0x60, "register": 0x10},
        "wn": {"address": 0x60, "register": 0x20, "type": "int16", "scale": 0.01},
        "wr": {"address": 0x60},
    }
    for fid, params in docs.items():
        await flows.deploy(rig.engine, flows.single(fid, "I2CWriteNode", params, ports=("error",)))
    rig.engine.inject("wb", "n", {"payload": 0xAB})
    rig.engine.inject("wb", "n", {"payload": [1, 2, 3]})
    rig.engine.inject("wn", "n", {"payload": -1.5})  # -150 as int16, big-endian
    rig.engine.inject("wr", "n", {"payload": [0x05, 0x42]})  # pointer 5, then 0x42
    for wrong in (256, [], "x", [1, -1], list(range(33))):
        rig.engine.inject("wb", "n", {"payload": wrong})
    rig.engine.inject("wn", "n", {"payload": 400.0})  # 40000 does not fit int16
    for fid in docs:
        await flows.settle(rig.engine, fid)
    assert dac.regs[0x10:0x13] == bytes([1, 2, 3])
    assert dac.regs[0x20:0x22] == (-150).to_bytes(2, "big", signed=True)
    assert dac.regs[0x05] == 0x42
    ops = [(t.op, t.reg, t.data) for t in rig.fake.history]
    assert ops[0] == ("write_byte_data", 0x10, bytes([0xAB]))
    assert ("i2c_rdwr.write", None, bytes([0x05, 0x42])) in ops
    bad = flows.got("wb", "sink_error")
    assert len(bad) == 5 and "a byte 0..255 or a list of 1..32" in bad[0]["error"]["message"]
    assert flows.stats(rig.engine, "wb", "n")["bad_payloads"] == 5
    assert "400.0 does not fit int16" in flows.got("wn", "sink_error")[0]["error"]["message"]
    assert flows.stats(rig.engine, "wb", "n")["written"] == 2


@pytest.mark.asyncio
async def test_a_write_to_a_silent_device_is_refused_not_kept(rig: Rig) -> None:
    rig.fake.fail[0x60] = errno.EREMOTEIO
    dev = rig.fake.devices[0x60] = FakeDevice()
    doc = flows.single("w", "I2CWriteNode", {"address": 0x60, "register": 1}, ports=("error",))
    await flows.deploy(rig.engine, doc)
    rig.engine.inject("w", "n", {"payload": 1})
    await flows.settle(rig.engine, "w")
    assert flows.got("w", "sink_error")[0]["error"]["type"] == "DeviceNotAnswering"
    del rig.fake.fail[0x60]
    rig.engine.inject("w", "n", {"payload": 2})
    await flows.settle(rig.engine, "w")
    assert dev.regs[1] == 2 and [t.data for t in rig.fake.history] == [bytes([2])]
