"""One running simulation: the world, every device of the scenario on its transport, the
timeline (faults, driven inputs), and the log.

``Simulator.start()`` brings everything up and writes ``ready.json`` in the run
directory (where each device can be reached: the socket, the Modbus ports, the serial
links); ``run()`` lasts the scenario's duration (or until stopped); ``close()`` takes it
all down and removes the links and the socket.

The log (``--log``, JSON lines) holds a ``sample`` of the model every ``record_every``
simulated seconds (the truth: air temperature, outside, sun, each actuator's level, the
power) and every ``event`` (an actuator switched, a fault started or ended, a serial
device unplugged). ``mechaway-sim plot`` draws it.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any, TextIO

from mechaway.drivers.simlink import default_dir
from mechaway_sim.gpio import Header
from mechaway_sim.i2c import I2CBuses
from mechaway_sim.modbus import ModbusSim
from mechaway_sim.mqttpub import MqttSensors
from mechaway_sim.scenario import DAY, Scenario, offset_s
from mechaway_sim.serialdev import PtySerial
from mechaway_sim.server import SimSocket
from mechaway_sim.world import World

#: the fault timeline of a scenario that runs until stopped is laid out this far ahead
FOREVER_DAYS = 30
SAMPLE_KEYS = ("air_c", "air_rh", "outside_c", "sun_w_m2", "power_w", "power_l1_w",
               "power_l2_w", "power_l3_w", "energy_kwh")  # fmt: skip


class Simulator:
    def __init__(
        self,
        sc: Scenario,
        *,
        speed: float | None = None,
        run_dir: str | Path | None = None,
        socket: str | None = None,
        log: str | Path | None = None,
        record_every: float = 60.0,
        free_ports: bool = False,
        mqtt: str | None = None,
        console: TextIO | None = None,
    ) -> None:
        self.sc = sc
        self.run_dir = Path(run_dir or default_dir())
        self.socket_path = socket or str(self.run_dir / "sim.sock")
        self.log_path = Path(log) if log else None
        self.record_every = record_every
        self.free_ports = free_ports
        self.console = console
        if mqtt:
            host, _, port = mqtt.rpartition(":")
            sc.mqtt.host, sc.mqtt.port = host or "127.0.0.1", int(port)
        self.world = World(sc, speed)
        self.i2c = I2CBuses(self.world, sc.i2c)
        self.header = Header(self.world, sc)
        self.socket = SimSocket(self.socket_path, self.i2c, self.header, sc.scenario.name)
        self.modbus = [ModbusSim(self.world, m, self.run_dir) for m in sc.modbus]
        self.serial = [PtySerial(self.world, s, self.run_dir) for s in sc.serial]
        self.mqtt = MqttSensors(self.world, sc.mqtt)
        self._tasks: list[asyncio.Task[None]] = []
        self._log: TextIO | None = None
        self._stop = asyncio.Event()
        self.world.listeners.append(self._on_event)

    @property
    def ready_file(self) -> Path:
        return self.run_dir / "ready.json"

    # -- lifecycle ------------------------------------------------------------------------
    async def start(self) -> None:
        self.run_dir.mkdir(parents=True, exist_ok=True)
        with contextlib.suppress(FileNotFoundError):
            self.ready_file.unlink()
        if self.log_path is not None:
            self.log_path.parent.mkdir(parents=True, exist_ok=True)
            self._log = self.log_path.open("w", encoding="utf-8")
        if self.free_ports:
            for m in self.modbus:
                if m.spec.transport == "tcp":
                    m.spec.port = 0
        await self.socket.start()
        for m in self.modbus:
            await m.start()
        for s in self.serial:
            await s.start()
        await self.mqtt.start()
        self.world.clock.restart()
        self._tasks = [
            asyncio.create_task(self._timeline(), name="mechaway-sim.timeline"),
            asyncio.create_task(self._recorder(), name="mechaway-sim.recorder"),
        ]
        ready = self.describe()
        tmp = self.ready_file.with_suffix(".tmp")
        tmp.write_text(json.dumps(ready, indent=2) + "\n")
        os.replace(tmp, self.ready_file)
        self.world.emit({"event": "ready", **ready})

    async def run(self, duration: float | None = None) -> None:
        """Until ``duration`` simulated seconds (the scenario's by default; 0: until
        ``stop()``)."""
        limit = self.sc.duration if duration is None else duration
        clock = self.world.clock
        while not self._stop.is_set():
            if limit and clock.now() >= limit:
                break
            wait = clock.real_in(limit - clock.now()) if limit else 3600.0
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stop.wait(), max(0.01, min(wait, 1.0)))
        self._sample()
        self.world.emit({"event": "end", "summary": self.summary()})

    def stop(self) -> None:
        self._stop.set()

    async def close(self) -> None:
        for t in self._tasks:
            t.cancel()
        for t in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await t
        self._tasks.clear()
        await self.mqtt.close()
        for s in self.serial:
            await s.close()
        for m in self.modbus:
            await m.close()
        await self.socket.close()
        with contextlib.suppress(FileNotFoundError):
            self.ready_file.unlink()
        if self._log is not None:
            self._log.close()
            self._log = None

    # -- the timeline -----------------------------------------------------------------------
    def timeline(self) -> list[tuple[float, str, Callable[[], None]]]:
        """(simulated time, what, action) for every fault boundary and driven input level."""
        sc = self.sc
        until = sc.duration or FOREVER_DAYS * DAY
        items: list[tuple[float, str, Callable[[], None]]] = []
        for at, window, begins in self.world.boundaries(until):
            f = window.fault
            what = f"{f.kind} {f.target} {'starts' if begins else 'ends'}"
            items.append((at, what, functools.partial(self.world.fire, window, begins)))
        for p in sc.gpio:
            for at_text, level in p.schedule:
                first = offset_s(at_text, sc.start_tod)
                daily = not at_text.strip().startswith("+")
                at = first
                while at <= until:
                    drive = functools.partial(self.header.drive, p.pin, level)
                    items.append((at, f"pin {p.pin} -> {level}", drive))
                    if not daily:
                        break
                    at += DAY
        items.sort(key=lambda item: item[0])
        return items

    async def _timeline(self) -> None:
        clock = self.world.clock
        for at, _what, action in self.timeline():
            wait = clock.real_in(at - clock.now())
            if wait > 0:
                await asyncio.sleep(wait)
            action()

    async def _recorder(self) -> None:
        clock = self.world.clock
        while True:
            self._sample()
            await asyncio.sleep(max(0.005, clock.real_in(self.record_every)))

    def _sample(self) -> None:
        model = self.world.sync()
        sig = model.signals
        record: dict[str, Any] = {"sample": True, **{k: round(sig[k], 3) for k in SAMPLE_KEYS}}
        record["levels"] = {k: round(v, 3) for k, v in model.levels.items()}
        self.world.emit(record)

    def _on_event(self, record: dict[str, Any]) -> None:
        if self._log is not None:
            self._log.write(json.dumps(record) + "\n")
            if "sample" not in record:
                self._log.flush()
        if self.console is not None and "sample" not in record and record.get("event") != "ready":
            what = {k: v for k, v in record.items() if k not in ("t", "clock", "ts", "event")}
            print(f"[{record['clock']}] {record.get('event')}: {what}", file=self.console,
                  flush=True)  # fmt: skip

    # -- reporting -----------------------------------------------------------------------
    def describe(self) -> dict[str, Any]:
        return {
            "scenario": self.sc.scenario.name,
            "pid": os.getpid(),
            "speed": self.world.clock.speed,
            "start": self.sc.scenario.start,
            "wall_start": self.world.clock.wall0,
            "socket": self.socket_path,
            "i2c": {d.name: {"bus": d.bus, "address": f"0x{d.addr:02x}", "chip": d.chip}
                    for d in self.sc.i2c},
            "gpio": {str(p.pin): {"name": p.name, "mode": p.mode} for p in self.sc.gpio},
            "modbus": {m.spec.name: m.describe() for m in self.modbus},
            "serial": {s.spec.name: s.describe() for s in self.serial},
            "mqtt": ({"broker": f"{self.sc.mqtt.host}:{self.sc.mqtt.port}",
                      "sensors": [s.topic for s in self.sc.mqtt.sensors]}
                     if self.mqtt.enabled else None),
            "log": str(self.log_path) if self.log_path else None,
        }  # fmt: skip

    def summary(self) -> dict[str, Any]:
        return {
            "sim_seconds": round(self.world.now(), 1),
            "socket_requests": self.socket.requests,
            "i2c_transactions": self.i2c.transactions,
            "modbus_requests": {m.spec.name: m.requests for m in self.modbus},
            "serial_sent": {s.spec.name: s.sent for s in self.serial},
            "actuator_changes": dict(self.world.changes),
            "pin_toggles": {str(p.bcm): p.toggles for p in self.header.pins.values()},
            "mqtt_published": self.mqtt.published,
        }


async def run_scenario(sim: Simulator, duration: float | None = None) -> int:
    """Start, run, close; SIGINT/SIGTERM stop it early. The exit status."""
    import signal

    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError):
            loop.add_signal_handler(sig, sim.stop)
    try:
        await sim.start()
        if sim.console is not None:
            print(f"mechaway-sim: {sim.sc.scenario.name} at {sim.world.clock.speed:g}x, "
                  f"ready ({sim.ready_file})", file=sim.console, flush=True)  # fmt: skip
            print(json.dumps(sim.describe(), indent=2), file=sim.console, flush=True)
        await sim.run(duration)
    finally:
        await sim.close()
    return 0


def main_loop(coro: Any) -> Any:
    """Run ``coro`` under uvloop when it is installed (as the daemon does)."""
    try:
        import uvloop
    except ImportError:
        return asyncio.run(coro)
    return uvloop.run(coro)
