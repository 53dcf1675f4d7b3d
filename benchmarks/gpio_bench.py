"""GPIO and I2C figures, printed as one JSON line (keys name their unit).

- ``gpio_edge_to_msg_p50_us`` / ``_p99_us``: a level change driven on gpiozero's mock
  backend from another thread (as lgpio's callback thread would) until the message it
  becomes reaches the next node of a flow (GPIOInNode -> a probe node), the loop idle in
  between edges. Target: p50 <= 50 µs.
- ``gpio_burst_edges_per_s``: edges driven back to back from a thread, all delivered.
- ``bme280_decode_us``, ``sht31_decode_us``, ``tmp102_decode_us``: one reading's bytes to
  values (the pure decoders; BME280: the datasheet's integer compensation of T, P and H).
- ``i2c_transfer_p50_us`` / ``_p99_us``: one transaction through the I2C driver on the fake
  bus (bus lock, a hop to the bus's thread and back): the daemon's cost per I2C transfer.

Run: python benchmarks/gpio_bench.py [--edges 3000]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import statistics
import threading
import time
import timeit
from typing import Any

import uvloop

from mechaway.drivers.base import Connections, parse_sections
from mechaway.drivers.gpio import GpioDriver
from mechaway.drivers.i2c import I2CDriver, I2CSettings, chips
from mechaway.flow.validate import validate
from mechaway.nodes.base import Message, Node, Result
from mechaway.nodes.context import Services
from mechaway.nodes.registry import register_node
from mechaway.runtime.engine import Engine
from mechaway.testing.fake_i2c import (
    DATASHEET_CALIBRATION,
    FakeSMBus,
    FakeTMP102,
)

#: when each message reached the probe (perf_counter_ns), and who waits for it
ARRIVED: list[int] = []
GOT_ONE = threading.Event()
#: set (on the loop) once ``ARRIVED`` holds ``EXPECT[0]`` stamps
ALL_IN: list[asyncio.Event] = []
EXPECT = [0]


@register_node("GpioBenchProbe")
class Probe(Node):
    """Stamps the arrival of each message (the benchmark's end point)."""

    def process(self, msg: Message) -> Result:
        ARRIVED.append(time.perf_counter_ns())
        GOT_ONE.set()
        if len(ARRIVED) == EXPECT[0]:
            ALL_IN[0].set()
        return None


FLOW = {
    "id": "bench",
    "nodes": [
        {"id": "in", "type": "GPIOInNode", "params": {"pin": 5, "edge": "both"}},
        {"id": "probe", "type": "GpioBenchProbe"},
    ],
    "edges": [{"from": "in", "to": "probe"}],
}


def pct(values: list[float], q: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, int(q * len(s)))]


async def gpio_figures(edges: int) -> dict[str, Any]:
    conns = Connections(parse_sections({"gpio": {"backend": "mock"}}))
    engine = Engine(Services(drivers=conns))
    await engine.deploy(validate(FLOW), 1)
    drv: GpioDriver = await conns.get(GpioDriver)
    pin = drv.factory.pin(5)
    sent: list[int] = []
    level = [False]

    def drive(n: int, paced: bool) -> None:
        for _ in range(n):
            GOT_ONE.clear()
            level[0] = not level[0]
            sent.append(time.perf_counter_ns())
            pin.drive_high() if level[0] else pin.drive_low()
            if paced:
                GOT_ONE.wait(1.0)
                time.sleep(0.0002)  # the loop goes back to waiting in epoll

    loop = asyncio.get_running_loop()
    # warm up, then the paced run
    await loop.run_in_executor(None, drive, 300, True)
    ARRIVED.clear()
    sent.clear()
    await loop.run_in_executor(None, drive, edges, True)
    await asyncio.sleep(0.05)
    lat = [(a - s) / 1000 for s, a in zip(sent, ARRIVED, strict=False)]
    delivered = len(ARRIVED)
    # a burst: back to back from the thread
    ARRIVED.clear()
    sent.clear()
    burst = EXPECT[0] = 20_000
    ALL_IN[:] = [asyncio.Event()]
    t0 = time.perf_counter()
    await loop.run_in_executor(None, drive, burst, False)
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(ALL_IN[0].wait(), 30)
    burst_s = time.perf_counter() - t0
    burst_delivered = len(ARRIVED)
    await engine.stop()
    await conns.close()
    return {
        "gpio_edges": edges,
        "gpio_edges_delivered": delivered,
        "gpio_edge_to_msg_p50_us": round(statistics.median(lat), 1),
        "gpio_edge_to_msg_p99_us": round(pct(lat, 0.99), 1),
        "gpio_edge_to_msg_mean_us": round(statistics.fmean(lat), 1),
        "gpio_burst_edges_per_s": round(burst_delivered / burst_s),
        "gpio_burst_delivered": burst_delivered,
        "gpio_p50_target_met": statistics.median(lat) <= 50.0,
    }


def decode_figures() -> dict[str, Any]:
    data = bytes([0x65, 0x5A, 0xC0, 0x7E, 0xED, 0x00, 0x76, 0x49])
    sht = bytes([0x66, 0x66, chips.crc8(b"\x66\x66"), 0x80, 0x00, chips.crc8(b"\x80\x00")])
    n = 20_000
    out = {}
    for key, fn in (
        ("bme280_decode_us", lambda: chips.bme280_decode(DATASHEET_CALIBRATION, data)),
        ("sht31_decode_us", lambda: chips.sht31_decode(sht)),
        ("tmp102_decode_us", lambda: chips.tmp102_celsius(b"\x19\x00")),
    ):
        best = min(timeit.repeat(fn, number=n, repeat=5))
        out[key] = round(best / n * 1e6, 2)
    return out


async def i2c_figures(n: int = 2000) -> dict[str, Any]:
    fake = FakeSMBus(devices={0x48: FakeTMP102(21.0)})
    drv = I2CDriver("bench", I2CSettings(), bus_factory=lambda s: fake)
    await drv.start()
    await drv.wait_connected(5)

    def read(b: Any) -> list[int]:
        return list(b.read_i2c_block_data(0x48, 0, 2))

    lat = []
    for _ in range(200):
        await drv.transfer(0x48, read)
    for _ in range(n):
        t0 = time.perf_counter_ns()
        await drv.transfer(0x48, read)
        lat.append((time.perf_counter_ns() - t0) / 1000)
    await drv.close()
    return {
        "i2c_transfer_p50_us": round(statistics.median(lat), 1),
        "i2c_transfer_p99_us": round(pct(lat, 0.99), 1),
    }


async def main(edges: int) -> dict[str, Any]:
    result = await gpio_figures(edges)
    result.update(await i2c_figures())
    result.update(decode_figures())
    return result


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--edges", type=int, default=3000)
    args = ap.parse_args()
    print(json.dumps(uvloop.run(main(args.edges))))
