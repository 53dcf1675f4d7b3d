"""The hardware simulator's device round trips per second, printed as one JSON line.

The simulator (``mechaway-sim run``) runs as its own process, as next to a daemon, with a
scenario of one BME280 (I2C bus 1), GPIO 17 (output) and 27 (input), and an SDM630 on
Modbus TCP and on Modbus RTU over a pty. From this process, one request at a time:

- ``i2c_byte_rt_per_s``: ``SimSMBus.read_byte_data`` (the BME280's chip id), the bare
  socket client; ``i2c_block8_rt_per_s``: an 8-byte block read (the BME280's data);
  ``i2c_driver_rt_per_s``: the same byte read through ``I2CDriver.transfer`` (its lock and
  bus thread), as the daemon's nodes make it;
- ``gpio_write_rt_per_s``: a gpiozero ``DigitalOutputDevice`` on the ``sim`` pin factory
  toggled (one ``gpio.write`` each); ``gpio_read_rt_per_s``: an input's level read;
- ``modbus_tcp_read10_rt_per_s`` / ``modbus_rtu_read10_rt_per_s``: ``ModbusDriver.read``
  of 10 input registers of the SDM630 (values computed from the model at each request);
  ``modbus_tcp_p50_us`` / ``modbus_rtu_p50_us``;
- ``sim_cpu_us_per_<kind>_rt``: the simulator process's CPU time per round trip.

Run: python benchmarks/sim_bench.py [--n 3000]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).parent))
from _util import cpu_seconds

SCENARIO = """
[scenario]
name = "bench"
speed = 1
[[i2c]]
name = "air"
chip = "bme280"
[[gpio]]
pin = 17
name = "fan"
mode = "output"
[[gpio]]
pin = 27
name = "door"
mode = "input"
initial = 1
[[actuators]]
name = "fan"
input = "gpio:17"
power_w = 100
[[modbus]]
name = "tcp"
transport = "tcp"
port = 0
units = [{ unit = 1, device = "sdm630" }]
[[modbus]]
name = "rtu"
transport = "rtu"
link = "meter"
units = [{ unit = 1, device = "sdm630" }]
"""


def start_sim(tmp: Path) -> tuple[subprocess.Popen[bytes], dict[str, Any]]:
    (tmp / "bench.toml").write_text(SCENARIO)
    run = tmp / "run"
    proc = subprocess.Popen(
        [sys.executable, "-m", "mechaway_sim", "run", str(tmp / "bench.toml"), "--dir",
         str(run), "--free-ports", "--quiet"],
    )  # fmt: skip
    deadline = time.monotonic() + 30
    while not (run / "ready.json").exists():
        if proc.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError("the simulator did not start")
        time.sleep(0.05)
    return proc, json.loads((run / "ready.json").read_text())


def rate(n: int, seconds: float) -> float:
    return round(n / seconds, 1)


def bench_i2c(ready: dict[str, Any], n: int, pid: int, out: dict[str, Any]) -> None:
    from mechaway.drivers.i2c.sim import SimSMBus

    bus = SimSMBus(1, ready["socket"])
    try:
        for _ in range(200):
            bus.read_byte_data(0x76, 0xD0)
        cpu0, t0 = cpu_seconds(pid), time.perf_counter()
        for _ in range(n):
            bus.read_byte_data(0x76, 0xD0)
        t1, cpu1 = time.perf_counter(), cpu_seconds(pid)
        out["i2c_byte_rt_per_s"] = rate(n, t1 - t0)
        out["sim_cpu_us_per_i2c_rt"] = round((cpu1 - cpu0) / n * 1e6, 1)
        t0 = time.perf_counter()
        for _ in range(n):
            bus.read_i2c_block_data(0x76, 0xF7, 8)
        out["i2c_block8_rt_per_s"] = rate(n, time.perf_counter() - t0)
    finally:
        bus.close()


async def bench_i2c_driver(ready: dict[str, Any], n: int, out: dict[str, Any]) -> None:
    from mechaway.drivers.base import parse_sections
    from mechaway.drivers.i2c import I2CDriver

    raw = {"backend": "sim", "bus": 1, "sim_socket": ready["socket"]}
    drv = I2CDriver("air", parse_sections({"i2c": {"air": raw}})["i2c"]["air"])  # type: ignore[arg-type]
    await drv.start()
    try:
        await drv.wait_connected(5)

        def chip_id(b: Any) -> int:
            return int(b.read_byte_data(0x76, 0xD0))

        for _ in range(200):
            await drv.transfer(0x76, chip_id)
        t0 = time.perf_counter()
        for _ in range(n):
            await drv.transfer(0x76, chip_id)
        out["i2c_driver_rt_per_s"] = rate(n, time.perf_counter() - t0)
    finally:
        await drv.close()


def bench_gpio(ready: dict[str, Any], n: int, pid: int, out: dict[str, Any]) -> None:
    from gpiozero import DigitalInputDevice, DigitalOutputDevice

    from mechaway.drivers.gpio.sim import SimFactory

    factory = SimFactory(ready["socket"])
    try:
        fan = DigitalOutputDevice(17, pin_factory=factory)
        door = DigitalInputDevice(27, pull_up=False, pin_factory=factory)
        for _ in range(200):
            fan.toggle()
        cpu0, t0 = cpu_seconds(pid), time.perf_counter()
        for _ in range(n):
            fan.toggle()
        t1, cpu1 = time.perf_counter(), cpu_seconds(pid)
        out["gpio_write_rt_per_s"] = rate(n, t1 - t0)
        out["sim_cpu_us_per_gpio_rt"] = round((cpu1 - cpu0) / n * 1e6, 1)
        t0 = time.perf_counter()
        for _ in range(n):
            assert door.pin.state == 1
        out["gpio_read_rt_per_s"] = rate(n, time.perf_counter() - t0)
        fan.close()
        door.close()
    finally:
        factory.close()


async def bench_modbus(ready: dict[str, Any], name: str, n: int, pid: int,
                       out: dict[str, Any]) -> None:  # fmt: skip
    from mechaway.drivers.base import parse_sections
    from mechaway.drivers.modbus import ModbusDriver

    where = ready["modbus"][name]["at"]
    raw: dict[str, Any] = {"timeout": 2.0}
    if name == "tcp":
        host, port = where.rsplit(":", 1)
        raw.update(host=host, port=int(port))
    else:
        raw.update(serial_port=where, baudrate=115200, frame_gap=0.0)
    drv = ModbusDriver(name, parse_sections({"modbus": {name: raw}})["modbus"][name])  # type: ignore[arg-type]
    await drv.start()
    try:
        await drv.wait_connected(5)
        for _ in range(100):
            await drv.read(1, "input", 0, 10)
        lat = []
        cpu0, t0 = cpu_seconds(pid), time.perf_counter()
        for _ in range(n):
            a = time.perf_counter()
            await drv.read(1, "input", 0, 10)
            lat.append(time.perf_counter() - a)
        t1, cpu1 = time.perf_counter(), cpu_seconds(pid)
        out[f"modbus_{name}_read10_rt_per_s"] = rate(n, t1 - t0)
        out[f"modbus_{name}_p50_us"] = round(statistics.median(lat) * 1e6, 1)
        out[f"sim_cpu_us_per_modbus_{name}_rt"] = round((cpu1 - cpu0) / n * 1e6, 1)
    finally:
        await drv.close()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n", type=int, default=3000, help="round trips per figure")
    args = ap.parse_args()
    out: dict[str, Any] = {"n": args.n}
    with tempfile.TemporaryDirectory(prefix="sim-bench-") as tmp:
        proc, ready = start_sim(Path(tmp))
        try:
            bench_i2c(ready, args.n, proc.pid, out)
            asyncio.run(bench_i2c_driver(ready, args.n, out))
            bench_gpio(ready, args.n, proc.pid, out)
            modbus_n = max(100, args.n // 3)
            asyncio.run(bench_modbus(ready, "tcp", modbus_n, proc.pid, out))
            asyncio.run(bench_modbus(ready, "rtu", modbus_n, proc.pid, out))
        finally:
            proc.terminate()
            proc.wait(10)
    print(json.dumps(out))


if __name__ == "__main__":
    main()
