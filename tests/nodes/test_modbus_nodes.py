"""Modbus nodes in flows against a real pymodbus server (TCP and RTU on a pty pair): polls
and their merged requests, a device profile, failures on the error port, the failures
Node-RED's Modbus users report, and the daemon itself with a ``[modbus.plc]`` section."""

from __future__ import annotations

import asyncio
import json
import struct
import sys
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "drivers" / "modbus"))
from modbus_sim import (  # the shared simulator of the driver tests
    ModbusSim,
    PtyLine,
    SimThread,
    blocks,
    regs,
)

from mechaway.drivers.base import Connections, parse_sections
from mechaway.drivers.modbus import profiles
from mechaway.errors import FlowError
from mechaway.flow.validate import validate
from mechaway.nodes.context import Services
from mechaway.runtime.engine import Engine
from mechaway.testing.daemon import DaemonProc
from mechaway.testing.flows import IDLE_SOURCE, deploy, edge, got, node, stats

FAST = {"timeout": 0.2, "reconnect_min": 0.05, "reconnect_max": 0.2,
        "unit_backoff_min": 0.3, "unit_backoff_max": 0.6}  # fmt: skip


async def until(cond: Callable[[], Any], timeout: float = 15.0, what: str = "") -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what or cond}")
        await asyncio.sleep(0.01)


def plant(u: int) -> Any:
    """Holding 0..9 and 12..21 (10 and 11 unmapped: exception 2), input 0..9."""
    return blocks(
        holding=[regs(0, [u * 100 + i for i in range(10)]),
                 regs(12, [u * 100 + 12 + i for i in range(10)])],
        inputs=[regs(0, [u * 1000 + i for i in range(10)])],
    )  # fmt: skip


class Rig:
    def __init__(self, sim: ModbusSim, section: dict[str, Any], line: PtyLine | None) -> None:
        self.sim = sim
        self.line = line
        self.conns = Connections(parse_sections({"modbus": {"plc": {**FAST, **section}}}))
        self.engine = Engine(Services(drivers=self.conns))

    def flow(self, fid: str, *nodes: dict[str, Any], edges: list[dict[str, Any]]) -> dict[str, Any]:
        return {"id": fid, "name": fid, "nodes": [IDLE_SOURCE, *nodes], "edges": edges}

    async def close(self) -> None:
        await self.engine.stop()
        await self.conns.close()
        await self.sim.stop()
        if self.line is not None:
            self.line.close()


async def make(kind: str, units: dict[int, Any] | None = None) -> Rig:
    sim = ModbusSim(units or {1: plant(1), 2: plant(2)})
    if kind == "tcp":
        port = await sim.start_tcp()
        return Rig(sim, {"host": "127.0.0.1", "port": port}, None)
    line = PtyLine()
    line.start()
    await sim.start_rtu(line.server_path)
    return Rig(sim, {"serial_port": line.client_path, "baudrate": 115200}, line)


@pytest_asyncio.fixture(params=["tcp", "rtu"])
async def rig(request: pytest.FixtureRequest) -> AsyncIterator[Rig]:
    r = await make(request.param)
    yield r
    await r.close()


@pytest_asyncio.fixture
async def tcp(request: pytest.FixtureRequest) -> AsyncIterator[Rig]:
    r = await make("tcp")
    yield r
    await r.close()


def reader(nid: str = "r", **params: Any) -> dict[str, Any]:
    return node(nid, "ModbusReadNode", connection="plc", **params)


def sinks(fid_node: str) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """A CollectNode on ``out`` and one on ``error`` of node ``fid_node``."""
    nodes = [node("out", "CollectNode"), node("err", "CollectNode")]
    edges = [edge(fid_node, "out"), edge(fid_node, "err", "error")]
    return nodes, edges


@pytest.mark.asyncio
async def test_interval_polls_emit_one_message_per_poll_from_merged_requests(rig: Rig) -> None:
    reads = [{"name": "a", "address": 0}, {"name": "b", "address": 1, "type": "uint32"},
             {"name": "c", "address": 3, "type": "int16", "scale": 0.5},
             {"name": "i", "address": 2, "table": "input"}]  # fmt: skip
    s_nodes, s_edges = sinks("r")
    await deploy(rig.engine, rig.flow("f1", reader(interval=0.05, reads=reads), *s_nodes,
                                      edges=[edge("src", "r"), *s_edges]))  # fmt: skip
    await until(lambda: len(got("f1", "out")) >= 3, what="three polls")
    msg = got("f1", "out")[0]
    assert msg["payload"] == {"a": 100, "b": (101 << 16) | 102, "c": 51.5, "i": 1002}
    assert msg["connection"] == "plc" and msg["unit"] == 1 and abs(msg["ts"] - time.time()) < 60
    assert set(msg) == {"payload", "connection", "unit", "ts"}
    st = stats(rig.engine, "f1", "r")
    assert st["requests_per_poll"] == 2  # holding 0..3 in one request, input 2 in another
    polls = st["polls"]
    # merging, counted at the server: two requests per poll, never more
    assert rig.sim.count(unit=1) <= 2 * (polls + 1) and rig.sim.count(unit=1, fc=3) >= polls
    assert got("f1", "err") == []


@pytest.mark.asyncio
async def test_a_poll_per_message_keeps_the_message_and_answers_each_in_order(rig: Rig) -> None:
    s_nodes, s_edges = sinks("r")
    await deploy(rig.engine, rig.flow("f2", reader(unit=2, reads=[{"name": "x", "address": 5}]),
                                      *s_nodes, edges=[edge("src", "r"), *s_edges]))  # fmt: skip
    for i in range(5):
        rig.engine.inject("f2", "r", {"payload": None, "topic": "ask", "seq": i})
    await until(lambda: len(got("f2", "out")) == 5, what="five answers")
    out = got("f2", "out")
    assert [m["seq"] for m in out] == list(range(5))
    assert all(m["payload"] == {"x": 205} and m["topic"] == "ask" and m["unit"] == 2 for m in out)
    assert rig.sim.count(unit=2) == 5


@pytest.mark.asyncio
async def test_a_profile_replaces_the_read_lines() -> None:
    """eastron-sdm630: 44 float32 input registers in 5 requests (the meter takes 80 at most)."""
    prof = profiles.load("eastron-sdm630")
    values = {r.name: float(i) + 0.5 for i, r in enumerate(prof.reads)}
    layout = [0] * 0x15A
    for r in prof.reads:
        hi, lo = struct.unpack(">2H", struct.pack(">f", values[r.name]))
        layout[r.address], layout[r.address + 1] = hi, lo
    rig = await make("tcp", {1: blocks(inputs=[regs(0, layout)])})
    try:
        s_nodes, s_edges = sinks("r")
        await deploy(rig.engine, rig.flow("f3", reader(profile="eastron-sdm630"), *s_nodes,
                                          edges=[edge("src", "r"), *s_edges]))  # fmt: skip
        rig.engine.inject("f3", "r", {"payload": 1})
        await until(lambda: got("f3", "out"), what="a poll")
        payload = got("f3", "out")[0]["payload"]
        assert payload == values and payload["voltage_l1"] == 0.5
        assert [(q.fc, q.address, q.count) for q in rig.sim.requests] == [
            (4, 0x00, 80), (4, 0x50, 8), (4, 0xC8, 8), (4, 0xE0, 2), (4, 0x156, 4)
        ]  # fmt: skip
        assert max(q.count or 0 for q in rig.sim.requests) <= prof.max_registers
    finally:
        await rig.close()


@pytest.mark.asyncio
async def test_a_merged_read_the_device_refuses_is_split_once_and_stays_split(tcp: Rig) -> None:
    reads = [{"name": "a", "address": 9}, {"name": "b", "address": 12}]  # 10, 11 unmapped
    s_nodes, s_edges = sinks("r")
    await deploy(tcp.engine, tcp.flow("f4", reader(reads=reads, max_gap=4), *s_nodes,
                                      edges=[edge("src", "r"), *s_edges]))  # fmt: skip
    tcp.engine.inject("f4", "r", {"payload": 1})
    tcp.engine.inject("f4", "r", {"payload": 2})
    await until(lambda: len(got("f4", "out")) == 2, what="two polls")
    assert [m["payload"] for m in got("f4", "out")] == [{"a": 109, "b": 112}] * 2
    # the merged request once (refused), then the two parts per poll
    assert [(q.address, q.count) for q in tcp.sim.requests] == [(9, 4), (9, 1), (12, 1),
                                                                 (9, 1), (12, 1)]  # fmt: skip
    st = stats(tcp.engine, "f4", "r")
    assert st["splits"] == 1 and st["requests_per_poll"] == 2 and got("f4", "err") == []


@pytest.mark.asyncio
async def test_failures_go_to_the_error_port_counted_never_through_the_flow(tcp: Rig) -> None:
    s_nodes, s_edges = sinks("r")
    await deploy(tcp.engine, tcp.flow("f5", reader(reads=[{"name": "x", "address": 0}]),
                                      *s_nodes, edges=[edge("src", "r"), *s_edges]))  # fmt: skip
    tcp.sim.fail[1] = 4
    tcp.engine.inject("f5", "r", {"payload": 1, "seq": 1})  # server device failure
    await until(lambda: len(got("f5", "err")) == 1, what="the first error")
    tcp.sim.fail[1] = 6
    tcp.engine.inject("f5", "r", {"payload": 1, "seq": 2})  # server device busy
    await until(lambda: len(got("f5", "err")) == 2, what="two errors")
    e1, e2 = (m["error"] for m in got("f5", "err"))
    assert (e1["type"], e1["kind"], e1["code"]) == ("ModbusExceptionReply", "exceptions", 4)
    assert e2["code"] == 6 and e2["connection"] == "plc" and e2["unit"] == 1
    assert "server device busy" in e2["message"]
    assert [m["seq"] for m in got("f5", "err")] == [1, 2]  # the asking message comes along
    st = stats(tcp.engine, "f5", "r")
    assert st["errors"] == 2 and st["failures"] == {"exceptions": 2}
    assert got("f5", "out") == []


@pytest.mark.asyncio
async def test_a_dead_unit_does_not_slow_the_other_units_and_comes_back(rig: Rig) -> None:
    """Node-RED #446: one dead unit behind a gateway stalling every other unit."""
    if rig.line is not None:
        rig.line.drop_units.add(2)
    else:
        rig.sim.silent.add(2)
    one = reader("one", interval=0.02, reads=[{"name": "x", "address": 0}])
    two = reader("two", unit=2, interval=0.02, reads=[{"name": "x", "address": 0}])
    nodes = [one, two, node("o1", "CollectNode"), node("o2", "CollectNode"),
             node("e2", "CollectNode")]  # fmt: skip
    edges = [edge("src", "one"), edge("src", "two"), edge("one", "o1"), edge("two", "o2"),
             edge("two", "e2", "error")]  # fmt: skip
    await deploy(rig.engine, rig.flow("f6", *nodes, edges=edges))
    await until(lambda: len(got("f6", "o1")) >= 40, 30, "40 polls of unit 1")
    errors2 = len(got("f6", "e2"))
    st2 = stats(rig.engine, "f6", "two")
    assert got("f6", "o2") == [] and 1 <= errors2 <= 10
    assert st2["skipped"] > 2 * errors2  # polls skipped while the unit is between probes
    assert st2["unit_state"] == "not answering"
    assert {m["error"]["kind"] for m in got("f6", "e2")} == {"timeouts"}
    # it comes back, and is polled again without a redeploy
    rig.sim.silent.discard(2)
    if rig.line is not None:
        rig.line.drop_units.discard(2)
    await until(lambda: len(got("f6", "o2")) >= 3, 30, "unit 2 polled again")
    assert got("f6", "o2")[-1]["payload"] == {"x": 200}


@pytest.mark.asyncio
async def test_polling_resumes_by_itself_after_the_server_restarts(tcp: Rig) -> None:
    """Node-RED #6/#273: polling that stops after a reconnect until a redeploy."""
    s_nodes, s_edges = sinks("r")
    await deploy(tcp.engine, tcp.flow("f7", reader(interval=0.02, reads=[{"name": "x",
                                                                          "address": 0}]),
                                      *s_nodes, edges=[edge("src", "r"), *s_edges]))  # fmt: skip
    await until(lambda: len(got("f7", "out")) >= 5, what="polls before the restart")
    await tcp.sim.stop()
    await until(lambda: stats(tcp.engine, "f7", "r")["skipped"] >= 5, what="polls skipped")
    n = len(got("f7", "out"))
    await tcp.sim.start_tcp(tcp.sim.port)
    await until(lambda: len(got("f7", "out")) >= n + 5, 30, "polls after the restart")
    kinds = [m["error"]["kind"] for m in got("f7", "err")]
    # the outage is said once on the error port, not once per skipped poll
    assert kinds.count("not_connected") == 1, kinds


@pytest.mark.asyncio
async def test_writes_encode_check_and_are_never_replayed(tcp: Rig) -> None:
    w = node("w", "ModbusWriteNode", connection="plc", address=2, type="int32",
             scale=0.1, property="payload.set")  # fmt: skip
    c = node("c", "ModbusWriteNode", connection="plc", table="coil", address=3, type="bool")
    nodes = [w, c, node("ok", "CollectNode"), node("err", "CollectNode")]
    edges = [edge("src", "w"), edge("src", "c"), edge("w", "ok"), edge("w", "err", "error"),
             edge("c", "ok"), edge("c", "err", "error")]  # fmt: skip
    await deploy(tcp.engine, tcp.flow("f8", *nodes, edges=edges))
    tcp.engine.inject("f8", "w", {"payload": {"set": -12.3}})
    tcp.engine.inject("f8", "w", {"payload": {"set": "hot"}})
    tcp.engine.inject("f8", "w", {"payload": {}})
    tcp.engine.inject("f8", "c", {"payload": True})
    tcp.engine.inject("f8", "c", {"payload": 2})
    await until(lambda: len(got("f8", "ok")) + len(got("f8", "err")) == 5, what="five writes")
    assert [m["payload"] for m in got("f8", "ok")] == [{"set": -12.3}, True]
    errs = [m["error"]["message"] for m in got("f8", "err")]
    assert errs == ["payload.set: expected a number, got the string 'hot'",
                    "payload.set: missing from the message",
                    "payload: expected true/false, got 2"]  # fmt: skip
    assert [(q.fc, q.address) for q in tcp.sim.requests] == [(16, 2), (5, 3)]
    conn = tcp.conns.live()[("modbus", "plc")]
    assert await conn.read(1, "holding", 2, 2) == [0xFFFF, 0xFF85]  # -12.3 / 0.1 as int32
    assert (await conn.read(1, "coil", 3, 1)) == [True]
    # the link goes down: a write is refused at once and never sent later
    await tcp.sim.stop()
    await until(lambda: not conn.connected, what="the driver to see the link down")
    tcp.engine.inject("f8", "w", {"payload": {"set": 99}})
    await until(lambda: len(got("f8", "err")) == 4, what="the refused write")
    assert got("f8", "err")[-1]["error"]["kind"] == "not_connected"
    tcp.sim.requests.clear()
    await tcp.sim.start_tcp(tcp.sim.port)
    await conn.wait_connected(15)
    assert await conn.read(1, "holding", 2, 2) == [100 + 2, 100 + 3]  # a fresh server
    assert tcp.sim.count(fc=16) == 0 and tcp.sim.count(fc=6) == 0  # nothing replayed


def test_params_are_checked_with_located_errors() -> None:
    def check(params: dict[str, Any], ntype: str = "ModbusReadNode") -> str:
        doc = {"id": "v", "nodes": [IDLE_SOURCE, node("n", ntype, **params)],
               "edges": [edge("src", "n")]}  # fmt: skip
        with pytest.raises(FlowError) as info:
            validate(doc)
        return str(info.value)

    assert "give reads, a profile, or both" in check({})
    assert "unknown profile 'sdm999' (known: eastron-sdm120, eastron-sdm630)" in check(
        {"profile": "sdm999"}
    )
    assert "nodes[1] (n).params.reads[0].type" in check(
        {"reads": [{"name": "x", "address": 0, "type": "int8"}]}
    )
    assert "a coil holds bits" in check(
        {"reads": [{"name": "x", "address": 0, "table": "coil", "type": "int16"}]}
    )
    assert "duplicate read name 'x'" in check(
        {"reads": [{"name": "x", "address": 0}, {"name": "x", "address": 1}]}
    )
    assert "nodes[1] (n).params.interval" in check(
        {"interval": 0, "reads": [{"name": "x", "address": 0}]}
    )
    assert "coils hold bits: type must be bool" in check(
        {"table": "coil", "address": 0}, "ModbusWriteNode"
    )
    assert "nodes[1] (n).params: missing required key `address`" in check({}, "ModbusWriteNode")


def test_profiles_load_and_a_bad_profile_names_its_key() -> None:
    assert profiles.available() == ["eastron-sdm120", "eastron-sdm630"]
    sdm630 = {r.name: r for r in profiles.load("eastron-sdm630").reads}
    sdm120 = {r.name: r for r in profiles.load("eastron-sdm120").reads}
    # addresses from Eastron's maps (register 3xxxx = input address xxxx - 1)
    assert (sdm630["voltage_l1"].address, sdm630["current_l1"].address) == (0x00, 0x06)
    assert (sdm630["power_total"].address, sdm630["frequency"].address) == (0x34, 0x46)
    assert (sdm630["import_energy"].address, sdm630["total_energy"].address) == (0x48, 0x156)
    assert (sdm120["voltage"].address, sdm120["power"].address) == (0x00, 0x0C)
    assert (sdm120["import_energy"].address, sdm120["total_energy"].address) == (0x48, 0x156)
    for r in [*sdm630.values(), *sdm120.values()]:
        assert (r.table, r.type, r.byte_order, r.word_order) == ("input", "float32", "big", "big")
    bad = 'description = "d"\nsource = "s"\n[[reads]]\nname = "x"\naddress = 70000\n'
    with pytest.raises(profiles.ProfileError, match=r"p\.toml: reads\[0\]\.address"):
        profiles.parse(bad, "p", where="p.toml")
    with pytest.raises(profiles.ProfileError, match=r"p\.toml: .*description"):
        profiles.parse('source = "s"\n[[reads]]\nname = "x"\naddress = 1\n', "p", where="p.toml")
    with pytest.raises(profiles.ProfileError, match="not a profile name"):
        profiles.load("../etc/passwd")


def test_the_daemon_polls_and_writes_through_a_modbus_section(tmp_path: Path) -> None:
    """``mechaway start`` with ``[modbus.plc]``: a flow copies holding 0 to holding 7."""
    sim = ModbusSim({1: plant(1)})
    with SimThread(sim) as server:
        daemon = DaemonProc(tmp_path, config=(
            f'[modbus.plc]\nhost = "127.0.0.1"\nport = {server.port}\ntimeout = 0.5\n'
            "reconnect_min = 0.05\nreconnect_max = 0.5\n"
        ))  # fmt: skip
        flow = {"id": "copy", "nodes": [
            IDLE_SOURCE,
            node("r", "ModbusReadNode", connection="plc", interval=0.05,
                 reads=[{"name": "v", "address": 0}]),
            node("w", "ModbusWriteNode", connection="plc", address=7, property="payload.v"),
        ], "edges": [edge("src", "r"), edge("r", "w")]}  # fmt: skip
        daemon.start()
        try:
            (daemon.flows / "copy.json").write_text(json.dumps(flow))
            daemon.wait(lambda: (daemon.flow_status("copy") or {}).get("nodes", {})
                        .get("w", {}).get("writes", 0) >= 3, 30, "three copies")  # fmt: skip
            status = daemon.status()
            plc = status["connections"]["modbus.plc"]
            assert plc["state"] == "connected" and plc["units"]["1"]["state"] == "ok"
            assert plc["counters"]["replies"] >= 6 and plc["counters"]["timeouts"] == 0
            writes = [q for q in list(sim.requests) if q.fc == 6]
            assert len(writes) >= 3 and {q.address for q in writes} == {7}
        finally:
            assert daemon.terminate() == 0


def test_an_interval_read_is_a_flows_only_source_and_a_per_message_one_is_not() -> None:
    from mechaway.errors import FlowError
    from mechaway.flow.validate import validate

    doc = {
        "id": "m",
        "nodes": [
            {"id": "meter", "type": "ModbusReadNode",
             "params": {"connection": "meter", "interval": 5, "profile": "eastron-sdm630"}},
            {"id": "l", "type": "LogNode"},
        ],
        "edges": [{"from": "meter", "to": "l"}],
    }  # fmt: skip
    assert validate(doc).doc.id == "m"
    del doc["nodes"][0]["params"]["interval"]  # type: ignore[index]
    with pytest.raises(FlowError, match="no source node"):
        validate(doc)
