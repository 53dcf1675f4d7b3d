"""Modbus figures, printed as one JSON line.

A pymodbus TCP server (SimDevice, 200 holding registers) runs in a subprocess. In this
process, in one run and interleaved in rounds so both see the same machine:

- ``bare_p50_us``/``bare_p99_us``: a bare ``AsyncModbusTcpClient`` reading 100 holding
  registers, one request at a time;
- ``daemon_p50_us``/``daemon_p99_us``: the same read through the daemon's path: a message
  injected into a flow -> ``ModbusReadNode`` (its sink queue and writer task) -> the
  ``ModbusDriver`` (bus lock, counters, unit state) -> decode of 50 float32 -> the message
  out, received by the next node;
- ``overhead_p50_us``: daemon p50 - bare p50 (target <= 50);
- ``polls_per_s``: 2,000 polls queued at once through the node, one TCP connection;
- ``cpu_us_per_poll`` (daemon path) and ``bare_cpu_us_per_poll``: this process's CPU time
  per poll (the server's is not counted);
- ``decode_100_registers_us``: decoding a 100-register reply into 50 float32 values
  (target <= 20); ``decode_100_uint16_us``: into 100 uint16 values.

Run: python benchmarks/modbus_bench.py [--rounds 5] [--per-round 400]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import struct
import subprocess
import sys
import time
import timeit
from pathlib import Path
from typing import Any

import uvloop

sys.path.insert(0, str(Path(__file__).parent))
from _util import free_port

SERVER = """
import asyncio, struct, sys, uvloop
from pymodbus.server import ModbusTcpServer
from pymodbus.simulator import DataType, SimData, SimDevice
async def main():
    regs = []
    for i in range(100):
        regs += list(struct.unpack(">2H", struct.pack(">f", i + 0.5)))
    dev = SimDevice(id=1, simdata=[SimData(0, values=regs, datatype=DataType.REGISTERS)])
    srv = ModbusTcpServer(dev, address=("127.0.0.1", int(sys.argv[1])))
    await srv.serve_forever()
uvloop.run(main())
"""


def pct(xs: list[float], p: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(p * len(xs)))]


def decode_costs() -> tuple[float, float]:
    from mechaway.drivers.modbus.decode import ReadSpec, plan

    floats = plan([ReadSpec(name=f"f{i}", address=2 * i, type="float32") for i in range(50)])
    ints = plan([ReadSpec(name=f"u{i}", address=i) for i in range(100)])
    assert len(floats) == 1 and len(ints) == 1
    regs = []
    for i in range(50):
        regs += list(struct.unpack(">2H", struct.pack(">f", i + 0.5)))
    f_dec, i_dec = floats[0].decode, ints[0].decode
    assert f_dec(regs)["f3"] == 3.5
    # the best of many short runs: the machine is shared, the least disturbed run counts
    n = 2000
    best_f = min(timeit.repeat(lambda: f_dec(regs), number=n, repeat=40)) / n * 1e6
    best_i = min(timeit.repeat(lambda: i_dec(regs), number=n, repeat=40)) / n * 1e6
    return best_f, best_i


async def run(port: int, rounds: int, per_round: int) -> dict[str, Any]:
    from pymodbus.client import AsyncModbusTcpClient

    import mechaway.testing.nodes  # noqa: F401  (CollectNode etc.)
    from mechaway.drivers.base import Connections, parse_sections
    from mechaway.flow.validate import validate
    from mechaway.nodes.base import Message, Node, Result
    from mechaway.nodes.context import Services
    from mechaway.nodes.registry import register_node
    from mechaway.runtime.engine import Engine

    arrived: list[asyncio.Future[None]] = []

    @register_node("ModbusBenchProbeNode")
    class Probe(Node):
        """Resolves the waiting future when a poll's message arrives."""

        def process(self, msg: Message) -> Result:
            if arrived and not arrived[0].done():
                arrived.pop(0).set_result(None)
            return None

    bare = AsyncModbusTcpClient("127.0.0.1", port=port, timeout=2, retries=0)
    for _ in range(100):
        if await bare.connect():
            break
        await asyncio.sleep(0.1)
    else:
        raise SystemExit("the Modbus server did not start")

    conns = Connections(parse_sections({"modbus": {"plc": {"host": "127.0.0.1", "port": port,
                                                           "timeout": 2.0}}}))  # fmt: skip
    engine = Engine(Services(drivers=conns))
    reads = [{"name": f"f{i}", "address": 2 * i, "type": "float32"} for i in range(50)]
    flow = {"id": "bench", "nodes": [
        {"id": "src", "type": "InjectNode", "params": {"once": True, "once_delay": 3600}},
        {"id": "r", "type": "ModbusReadNode", "params": {"connection": "plc", "reads": reads,
                                                          "queue_size": 5000}},
        {"id": "p", "type": "ModbusBenchProbeNode"},
    ], "edges": [{"from": "src", "to": "r"}, {"from": "r", "to": "p"}]}  # fmt: skip
    await engine.deploy(validate(flow), 1)
    drv = conns.live()[("modbus", "plc")]
    await drv.wait_connected(10)
    loop = asyncio.get_running_loop()

    async def daemon_poll() -> None:
        fut = loop.create_future()
        arrived.append(fut)
        engine.inject("bench", "r", {"payload": None})
        await fut

    async def bare_poll() -> None:
        r = await bare.read_holding_registers(0, count=100, device_id=1)
        assert not r.isError()

    for _ in range(200):  # warm both paths
        await bare_poll()
        await daemon_poll()
    lat_bare: list[float] = []
    lat_daemon: list[float] = []
    cpu_bare = cpu_daemon = 0.0
    for _ in range(rounds):
        c0 = time.process_time()
        for _ in range(per_round):
            t0 = time.perf_counter()
            await bare_poll()
            lat_bare.append(time.perf_counter() - t0)
        c1 = time.process_time()
        for _ in range(per_round):
            t0 = time.perf_counter()
            await daemon_poll()
            lat_daemon.append(time.perf_counter() - t0)
        c2 = time.process_time()
        cpu_bare += c1 - c0
        cpu_daemon += c2 - c1
    # throughput: polls queued at once, one connection, one request at a time on it
    n = 2000
    futs = [loop.create_future() for _ in range(n)]
    arrived.extend(futs)
    t0 = time.perf_counter()
    for _ in range(n):
        engine.inject("bench", "r", {"payload": None})
    await asyncio.gather(*futs)
    polls_per_s = n / (time.perf_counter() - t0)
    errors = engine.status()["bench"]["nodes"]["r"]["errors"]
    await engine.stop()
    await conns.close()
    bare.close()
    total = rounds * per_round
    bare_p50, daemon_p50 = pct(lat_bare, 0.5) * 1e6, pct(lat_daemon, 0.5) * 1e6
    return {
        "bare_p50_us": round(bare_p50, 1),
        "bare_p99_us": round(pct(lat_bare, 0.99) * 1e6, 1),
        "daemon_p50_us": round(daemon_p50, 1),
        "daemon_p99_us": round(pct(lat_daemon, 0.99) * 1e6, 1),
        "overhead_p50_us": round(daemon_p50 - bare_p50, 1),
        "overhead_mean_us": round(
            (statistics.fmean(lat_daemon) - statistics.fmean(lat_bare)) * 1e6, 1
        ),
        "polls_per_s": round(polls_per_s),
        "cpu_us_per_poll": round(cpu_daemon / total * 1e6, 1),
        "bare_cpu_us_per_poll": round(cpu_bare / total * 1e6, 1),
        "poll_errors": errors,
        "polls_measured": total,
    }


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--per-round", type=int, default=400)
    args = ap.parse_args()
    port = free_port()
    server = subprocess.Popen([sys.executable, "-c", SERVER, str(port)],
                              env={**os.environ, "PYTHONUNBUFFERED": "1"})  # fmt: skip
    try:
        out = uvloop.run(run(port, args.rounds, args.per_round))
    finally:
        server.terminate()
        server.wait(10)
    f32, u16 = decode_costs()
    out["decode_100_registers_us"] = round(f32, 2)
    out["decode_100_uint16_us"] = round(u16, 2)
    out["target_overhead_p50_us"] = 50
    out["target_decode_us"] = 20
    out["targets_met"] = out["overhead_p50_us"] <= 50 and f32 <= 20
    print(json.dumps(out))


if __name__ == "__main__":
    main()
