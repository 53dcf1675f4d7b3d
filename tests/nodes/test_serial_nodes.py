"""SerialInNode and SerialOutNode in real flows, over pseudo-terminals (the device end is
tests/drivers/serial/pty_device.py)."""

from __future__ import annotations

import asyncio
import base64
import pathlib
import sys
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
import pytest_asyncio

from mechaway.drivers.base import Connections, parse_sections
from mechaway.drivers.serial import SerialDriver
from mechaway.drivers.serial.protocol import encode_message
from mechaway.errors import FlowError
from mechaway.flow.validate import validate
from mechaway.nodes.context import Services
from mechaway.runtime.engine import Engine
from mechaway.testing import flows
from mechaway.testing.flows import edge, node, wait_until

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1] / "drivers" / "serial"))
from pty_device import PtyDevice

FAST = {"reconnect_min": 0.05, "reconnect_max": 0.2, "stable_after": 0.5}


class Rig:
    def __init__(self, engine: Engine, conns: Connections, device: PtyDevice) -> None:
        self.engine = engine
        self.conns = conns
        self.device = device

    async def driver(self) -> SerialDriver:
        drv: SerialDriver = await self.conns.get(SerialDriver, "dev")
        return drv


RigFactory = Callable[..., Any]


@pytest_asyncio.fixture
async def make_rig(tmp_path: pathlib.Path) -> AsyncIterator[RigFactory]:
    made: list[Rig] = []

    async def make(framing: str = "line", **kw: Any) -> Rig:
        device = PtyDevice(tmp_path, framing)
        section = {**FAST, "port": str(device.link), "framing": framing, **kw}
        conns = Connections(parse_sections({"serial": {"dev": section}}))
        engine = Engine(Services(drivers=conns), stop_timeout=2.0)
        rig = Rig(engine, conns, device)
        made.append(rig)
        await (await rig.driver()).wait_connected(5)
        return rig

    yield make
    for rig in made:
        await rig.engine.stop()
        await rig.conns.close()
        rig.device.unplug()


def in_flow(fid: str, **params: Any) -> dict[str, Any]:
    return flows.doc(
        fid,
        [node("in", "SerialInNode", connection="dev", **params), node("got", "CollectNode"),
         node("bad", "CollectNode")],
        [edge("in", "got"), edge("in", "bad", "error")],
    )  # fmt: skip


def out_flow(fid: str, **params: Any) -> dict[str, Any]:
    return flows.doc(
        fid,
        [flows.IDLE_SOURCE, node("out", "SerialOutNode", connection="dev", **params),
         node("acked", "CollectNode"), node("bad", "CollectNode")],
        [edge("src", "out"), edge("out", "acked"), edge("out", "bad", "error")],
    )  # fmt: skip


def kinds(fid: str) -> list[str]:
    return [m["error"]["kind"] for m in flows.got(fid, "bad")]


@pytest.mark.asyncio
async def test_json_lines_with_garbage_and_bad_frames(make_rig: RigFactory) -> None:
    rig = await make_rig("line", max_frame_bytes=64)
    await flows.deploy(rig.engine, in_flow("j"))
    rig.device.write(b'{"t":21.5}\n' + b"garbage line\n" + b"\xff\xfe\n" + b"[" * 100 + b"\n"
                     + b'{"t":22.0}\r\n')  # fmt: skip
    await wait_until(lambda: len(flows.got("j", "got")) == 2 and len(kinds("j")) == 3,
                     what="two payloads and three errors")  # fmt: skip
    got = flows.got("j", "got")
    assert [m["payload"] for m in got] == [{"t": 21.5}, {"t": 22.0}]
    assert {m["topic"] for m in got} == {"serial/dev"}
    assert all(m["connection"] == "dev" and isinstance(m["ts"], float) for m in got)
    assert kinds("j") == ["json", "utf8", "oversize"]
    bad = flows.got("j", "bad")
    assert base64.b64decode(bad[0]["payload"]) == b"garbage line"
    assert bad[2]["payload"] is None and bad[2]["error"]["type"] == "FrameError"
    st = flows.stats(rig.engine, "j", "in")
    assert st["frames"] == 2 and st["failures"] == {"json": 1, "utf8": 1, "oversize": 1}
    assert st["errors"] == 3


@pytest.mark.asyncio
async def test_text_csv_regex_and_bytes_decoders_share_one_port(make_rig: RigFactory) -> None:
    rig = await make_rig("line")
    await flows.deploy(rig.engine, in_flow("text", decode="text"))
    await flows.deploy(rig.engine, in_flow("csv", decode="csv", columns=["id", "w", "unit"]))
    await flows.deploy(rig.engine, in_flow("rx", decode="regex",
                                           pattern=r"^W=(?P<w>[-0-9.]+) ?(?P<unit>\w+)?"))
    await flows.deploy(rig.engine, in_flow("raw", decode="bytes"))
    rig.device.write(b"W=12.5 kg\n" + b'7,"1,5",g\n' + b"W=-3\n")
    await wait_until(lambda: len(flows.got("raw", "got")) == 3, what="three frames")
    assert flows.payloads("text", "got") == ["W=12.5 kg", '7,"1,5",g', "W=-3"]
    assert flows.payloads("csv", "got") == [
        {"id": "W=12.5 kg", "w": None, "unit": None},
        {"id": 7, "w": "1,5", "unit": "g"},
        {"id": "W=-3", "w": None, "unit": None},
    ]
    assert flows.payloads("rx", "got") == [{"w": 12.5, "unit": "kg"}, {"w": -3, "unit": None}]
    assert kinds("rx") == ["no_match"]
    assert [base64.b64decode(p) for p in flows.payloads("raw", "got")] == [
        b"W=12.5 kg", b'7,"1,5",g', b"W=-3"]


def test_params_are_checked_at_deploy() -> None:
    with pytest.raises(FlowError, match="pattern"):
        validate(in_flow("p", decode="regex"))
    with pytest.raises(FlowError, match="name the groups"):
        validate(in_flow("p", decode="regex", pattern="W=[0-9]+"))
    with pytest.raises(FlowError, match="pattern"):
        validate(in_flow("p", decode="regex", pattern="(?P<x>"))
    with pytest.raises(FlowError, match="decode"):
        validate(in_flow("p", decode="xml"))
    with pytest.raises(FlowError, match="encode"):
        validate(out_flow("p", encode="msgpack"))


@pytest.mark.asyncio
async def test_bridge_readings_hello_and_corrupt_frames_in_cobs(make_rig: RigFactory) -> None:
    rig = await make_rig("cobs")
    await flows.deploy(rig.engine, in_flow("r"))
    await flows.deploy(rig.engine, in_flow("all", messages="all"))
    dev = rig.device
    bad = bytearray(encode_message("cobs", {"t": "reading", "seq": 9, "values": {"a0": 9}}))
    bad[3] ^= 0x08
    dev.send({"v": 1, "t": "hello", "device": "uno-7", "caps": ["pin"]})
    dev.send({"t": "reading", "seq": 0, "values": {"a0": 512, "count": 0}})
    dev.write(bytes(bad) + b"\x41\x42\x43\x00")
    dev.send({"t": "heartbeat", "uptime_ms": 1000})
    dev.send({"t": "reading", "seq": 1, "values": {"a0": 513, "count": 1}})
    dev.send({"t": "launch"})
    await wait_until(lambda: len(flows.got("r", "got")) == 2 and len(kinds("r")) == 3,
                     what="two readings and three errors")  # fmt: skip
    got = flows.got("r", "got")
    assert [m["payload"] for m in got] == [{"a0": 512, "count": 0}, {"a0": 513, "count": 1}]
    assert [m["seq"] for m in got] == [0, 1]
    assert {m["topic"] for m in got} == {"serial/dev/reading"}
    assert {m["device"] for m in got} == {"uno-7"}
    assert kinds("r") == ["crc", "cobs", "schema"]
    await wait_until(lambda: len(flows.got("all", "got")) == 4, what="all four messages")
    assert [m["topic"].rsplit("/", 1)[1] for m in flows.got("all", "got")] == [
        "hello", "reading", "heartbeat", "reading"]
    status = (await rig.driver()).status()
    assert status["device"]["device"] == "uno-7" and status["counters"]["crc"] == 1


@pytest.mark.asyncio
@pytest.mark.parametrize("framing", ["line", "cobs"])
async def test_commands_back_to_the_device_with_acks(make_rig: RigFactory,
                                                     framing: str) -> None:
    rig = await make_rig(framing, bridge=True)
    rig.device.answer_commands(refuse=lambda c: "bad_pin" if c.get("pin") == 99 else None)
    await flows.deploy(rig.engine, out_flow("o"))
    for payload in ({"t": "cmd", "op": "pin", "pin": 13, "value": 1},
                    {"t": "cmd", "op": "pwm", "pin": 9, "value": 128},
                    {"t": "cmd", "op": "pin", "pin": 99, "value": 1},
                    {"t": "cmd", "op": "pin", "pin": 13, "value": 3}):
        rig.engine.inject("o", "out", {"payload": payload, "topic": "t"})
    await wait_until(lambda: len(flows.got("o", "acked")) == 2 and len(kinds("o")) == 2,
                     what="two acks and two refusals")  # fmt: skip
    assert rig.device.pins == {13: 1}
    assert [m["ack"]["t"] for m in flows.got("o", "acked")] == ["ack", "ack"]
    assert flows.got("o", "acked")[0]["payload"]["op"] == "pin"
    assert kinds("o") == ["bad_pin", "bad_command"]
    sent = [c for c in rig.device.commands if c["op"] != "hello"]
    assert [c["op"] for c in sent] == ["pin", "pwm", "pin"]  # the invalid one never left
    st = flows.stats(rig.engine, "o", "out")
    assert st["commands"] == 4 and st["failures"] == {"bad_pin": 1, "bad_command": 1}


@pytest.mark.asyncio
async def test_plain_frames_out_and_nothing_kept_while_unplugged(make_rig: RigFactory) -> None:
    rig = await make_rig("line")
    await flows.deploy(rig.engine, out_flow("json"))
    await flows.deploy(rig.engine, out_flow("text", encode="text"))
    await flows.deploy(rig.engine, out_flow("raw", encode="bytes", property="data"))
    rig.engine.inject("json", "out", {"payload": {"set": 1}})
    await flows.settle(rig.engine, "json")
    rig.engine.inject("text", "out", {"payload": "G28"})
    await flows.settle(rig.engine, "text")
    rig.engine.inject("raw", "out", {"data": base64.b64encode(b"AT+RST").decode()})
    rig.engine.inject("raw", "out", {"data": "***"})
    rig.engine.inject("raw", "out", {"payload": "no data key"})
    await flows.settle(rig.engine, "raw")
    await asyncio.sleep(0.05)
    assert rig.device.read_all() == b'{"set":1}\nG28\nAT+RST\n'
    assert kinds("raw") == ["bad_value", "missing"]
    rig.engine.inject("text", "out", {"payload": "two\nlines"})
    await flows.settle(rig.engine, "text")
    assert kinds("text") == ["bad_frame"]
    rig.device.unplug()
    drv = await rig.driver()
    await wait_until(lambda: not drv.connected, what="the unplug noticed")
    rig.engine.inject("text", "out", {"payload": "M104 S200"})
    await flows.settle(rig.engine, "text")
    assert kinds("text") == ["bad_frame", "not_connected"]
    rig.device.plug()
    await drv.wait_connected(5)
    await asyncio.sleep(0.1)
    assert rig.device.read_all() == b""  # the write made while away is not replayed


@pytest.mark.asyncio
async def test_flow_keeps_reading_across_an_unplug_each_frame_once(make_rig: RigFactory) -> None:
    rig = await make_rig("line", bridge=True)
    await flows.deploy(rig.engine, in_flow("u"))

    def reading(i: int) -> bytes:
        return encode_message("line", {"t": "reading", "seq": i, "values": {"i": i}})

    rig.device.write(b"".join(reading(i) for i in range(20)) + reading(20)[:9])
    await wait_until(lambda: len(flows.got("u", "got")) == 20, what="20 readings")
    rig.device.unplug()
    drv = await rig.driver()
    await wait_until(lambda: not drv.connected, what="unplug noticed")
    rig.device.plug()
    await drv.wait_connected(5)
    rig.device.write(reading(20)[9:] + b"".join(reading(i) for i in range(21, 40)))
    await wait_until(lambda: len(flows.got("u", "got")) == 39, what="readings after")
    assert [m["payload"]["i"] for m in flows.got("u", "got")] == [
        i for i in range(40) if i != 20]
    assert kinds("u") == ["json"]  # the cut frame's tail, alone on the new port
    assert drv.status()["reconnects"] == 1
