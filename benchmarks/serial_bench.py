"""Serial figures over a pseudo-terminal, both framings, printed as one JSON line.

A writer process (its CPU is not counted) plays the device on the pty's master end;
this process reads the other end two ways, one after the other, on the same pty:

- mechaway: the serial driver (bridge protocol on) -> SerialInNode -> a tap node, in an
  engine on uvloop: what the daemon does with a frame until it is a message in a flow;
- bare: pyserial opened the same way, ``read(in_waiting)`` in a loop, the same framer
  and decoder, nothing else (the floor).

Keys (``line_`` / ``cobs_`` prefix; ``_bare`` for the bare reader):
- ``frames_per_s``: a burst of ``frames`` readings (~45 B each) written as fast as the
  pty takes them, first to last frame seen;
- ``cpu_us_per_frame``: this process's CPU (user + system) over that burst / frames;
- ``p50_us``, ``p99_us``: frame-to-message latency at ``rate_hz`` frames/s (the writer
  stamps CLOCK_MONOTONIC into each frame; the tap or the bare loop reads the clock);
- ``p50_over_bare_us``: mechaway's p50 minus the bare reader's.

Targets (issue 13): >= 30,000 line frames/s, <= 20 us CPU per frame, p50 within 100 us
of the bare reader's at 500 frames/s.

Run: python benchmarks/serial_bench.py [--frames 60000] [--rate 500] [--seconds 4]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import subprocess
import sys
import time
import tty
from dataclasses import dataclass
from typing import Any, ClassVar

import uvloop

import mechaway.testing.nodes  # noqa: F401  (registers CollectNode, used by flows)
from mechaway.drivers.base import Connections, parse_sections
from mechaway.drivers.serial import SerialDriver
from mechaway.drivers.serial.protocol import decode_message, make_framer
from mechaway.flow.validate import validate
from mechaway.nodes.base import Message, Node, NoParams, Result
from mechaway.nodes.context import NodeContext, Services
from mechaway.nodes.registry import register_node
from mechaway.runtime.engine import Engine

WRITER = r"""
import os, sys, time, json, struct
import msgpack, binascii
fd, framing, mode = int(sys.argv[1]), sys.argv[2], sys.argv[3]
n, rate = int(sys.argv[4]), float(sys.argv[5])
def cobs(data):
    out = bytearray()
    for block in data.split(b"\0"):
        while len(block) >= 254:
            out.append(255); out += block[:254]; block = block[254:]
        out.append(len(block) + 1); out += block
    return bytes(out)
def frame(i, t):
    msg = {"t": "reading", "seq": i, "values": {"a0": i % 1024, "t_ns": t}}
    if framing == "line":
        return json.dumps(msg, separators=(",", ":")).encode() + b"\n"
    p = msgpack.packb(msg)
    return cobs(p + binascii.crc_hqx(p, 0xFFFF).to_bytes(2, "big")) + b"\0"
def write(data):
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]
sys.stdin.readline()  # go
if mode == "burst":
    data = b"".join(frame(i, 0) for i in range(n))
    for i in range(0, len(data), 4096):
        write(data[i:i + 4096])
else:
    period = 1.0 / rate
    due = time.monotonic()
    for i in range(n):
        now = time.monotonic()
        if due > now:
            time.sleep(due - now)
        write(frame(i, time.monotonic_ns()))
        due += period
sys.stdout.write("done\n"); sys.stdout.flush()
sys.stdin.readline()  # stay until told: closing the master would hang up the reader
"""


@dataclass(frozen=True)
class Run:
    """One measurement: the pty, the framing, burst or paced, how many frames, how fast."""

    path: str
    master: int
    framing: str
    mode: str
    n: int
    rate: float


class Tap:
    """What the tap nodes saw: count, first/last arrival, latencies; ``done`` is set when
    ``target`` frames have come."""

    count = 0
    target = 0
    first = 0.0
    last = 0.0
    lat_ns: ClassVar[list[int]] = []
    done: asyncio.Event | None = None

    @classmethod
    def reset(cls, target: int) -> None:
        cls.count = 0
        cls.target = target
        cls.first = cls.last = 0.0
        cls.lat_ns = []


@register_node("SerialBenchTapNode")
class TapNode(Node[NoParams]):
    """Counts messages; with a writer's stamp, records the frame-to-message latency."""

    def __init__(self, node_id: str, params: NoParams, ctx: NodeContext) -> None:
        super().__init__(node_id, params, ctx)

    def process(self, msg: Message) -> Result:
        t_ns = msg["payload"]["t_ns"]
        if t_ns:
            Tap.lat_ns.append(time.monotonic_ns() - t_ns)
        now = time.perf_counter()
        if not Tap.count:
            Tap.first = now
        Tap.last = now
        Tap.count += 1
        if Tap.count == Tap.target and Tap.done is not None:
            Tap.done.set()
        return None


def pty_pair() -> tuple[int, int, str]:
    master, slave = os.openpty()
    tty.setraw(slave)
    return master, slave, os.ttyname(slave)


def start_writer(run: Run) -> Any:
    return subprocess.Popen(
        [sys.executable, "-c", WRITER, str(run.master), run.framing, run.mode, str(run.n),
         str(run.rate)],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, pass_fds=(run.master,),
    )  # fmt: skip


def percentile(values: list[int], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] / 1000.0


async def mechaway_run(run: Run) -> dict[str, float]:
    section = {"port": run.path, "framing": run.framing, "bridge": True}
    conns = Connections(parse_sections({"serial": {"b": section}}))
    engine = Engine(Services(drivers=conns), stop_timeout=2.0)
    doc = {"id": "bench", "nodes": [
        {"id": "in", "type": "SerialInNode", "params": {"connection": "b"}},
        {"id": "tap", "type": "SerialBenchTapNode"}],
        "edges": [{"from": "in", "to": "tap"}]}  # fmt: skip
    await engine.deploy(validate(doc), 1)
    drv: SerialDriver = await conns.get(SerialDriver, "b")
    await drv.wait_connected(5)
    Tap.reset(run.n)
    Tap.done = asyncio.Event()
    writer = start_writer(run)
    cpu0 = time.process_time()
    writer.stdin.write("go\n")
    writer.stdin.flush()
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(Tap.done.wait(), 120)
    cpu = time.process_time() - cpu0
    out = summarise(cpu)
    writer.stdin.write("end\n")
    writer.stdin.flush()
    writer.wait(10)
    await engine.stop()
    await conns.close()
    return out


def summarise(cpu: float) -> dict[str, float]:
    got = Tap.count
    span = Tap.last - Tap.first
    out = {
        "frames_seen": got,
        "frames_per_s": round(got / span) if span > 0 else 0,
        "cpu_us_per_frame": round(cpu / max(got, 1) * 1e6, 2),
    }
    if Tap.lat_ns:
        out["p50_us"] = round(percentile(Tap.lat_ns, 0.50), 1)
        out["p99_us"] = round(percentile(Tap.lat_ns, 0.99), 1)
    return out


def bare_run(run: Run) -> dict[str, float]:
    import serial

    framing = run.framing
    ser = serial.Serial(run.path, baudrate=115200, timeout=0.5)
    framer = make_framer(framing)
    Tap.reset(run.n)
    writer = start_writer(run)
    cpu0 = time.process_time()
    writer.stdin.write("go\n")
    writer.stdin.flush()
    deadline = time.monotonic() + 120
    while Tap.count < run.n and time.monotonic() < deadline:
        data = ser.read(max(1, ser.in_waiting))
        for frame in framer.feed(data):
            if isinstance(frame, bytes):
                t_ns = decode_message(framing, frame)["values"]["t_ns"]
                if t_ns:
                    Tap.lat_ns.append(time.monotonic_ns() - t_ns)
                now = time.perf_counter()
                if not Tap.count:
                    Tap.first = now
                Tap.last = now
                Tap.count += 1
    cpu = time.process_time() - cpu0
    out = summarise(cpu)
    writer.stdin.write("end\n")
    writer.stdin.flush()
    writer.wait(10)
    ser.close()
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--frames", type=int, default=60_000, help="frames in the burst")
    ap.add_argument("--rate", type=float, default=500.0, help="frames/s for latency")
    ap.add_argument("--seconds", type=float, default=4.0, help="length of the latency run")
    args = ap.parse_args()
    result: dict[str, Any] = {"frames": args.frames, "rate_hz": args.rate}
    paced = int(args.rate * args.seconds)
    for framing in ("line", "cobs"):
        for label, runner in (("", "mechaway"), ("_bare", "bare")):
            figures: dict[str, float] = {}
            for mode, n in (("burst", args.frames), ("paced", paced)):
                master, slave, path = pty_pair()
                run = Run(path, master, framing, mode, n, args.rate)
                try:
                    got = uvloop.run(mechaway_run(run)) if runner == "mechaway" else bare_run(run)
                finally:
                    os.close(master)
                    os.close(slave)
                if got["frames_seen"] < n:
                    result[f"{framing}{label}_{mode}_lost"] = n - got["frames_seen"]
                if mode == "burst":
                    figures["frames_per_s"] = got["frames_per_s"]
                    figures["cpu_us_per_frame"] = got["cpu_us_per_frame"]
                else:
                    figures["p50_us"] = got.get("p50_us", -1.0)
                    figures["p99_us"] = got.get("p99_us", -1.0)
            for key, value in figures.items():
                result[f"{framing}{label}_{key}"] = value
        result[f"{framing}_p50_over_bare_us"] = round(
            result[f"{framing}_p50_us"] - result[f"{framing}_bare_p50_us"], 1)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
