"""Simulated serial devices on ptys, behind a stable symlink in the run directory (as
``/dev/serial/by-id/...`` on a board): the daemon opens the link like a USB serial port.

- ``bridge``: a microcontroller speaking the mechaway bridge protocol
  (firmware-bridges/PROTOCOL.md) in either framing, with mechaway's own framers: ``hello``
  when plugged in and when asked, a ``reading`` of its wired signals every ``every``
  (``seq`` from 0 at each boot), ``ack``/``error`` for commands (``pin``, ``pwm``,
  ``custom``, ``hello``; anything else is ``bad_op``).
- ``nmea``: a GPS sending ``$GPGGA`` and ``$GPRMC`` lines with their checksums.

Faults: ``unplug`` closes the pty and removes the link (the daemon's reads fail, the port
is gone) and, when the fault ends, makes a new pty at the same link (the device is back
under another /dev/pts/N, rebooted); ``silent`` stops the readings; ``noise`` adds noise.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import os
from pathlib import Path
from typing import Any

from mechaway.drivers.serial.protocol import (
    FrameError,
    ProtocolError,
    decode_message,
    encode_message,
    make_framer,
)
from mechaway_sim.modbus import point, raw_pty
from mechaway_sim.scenario import Fault, SerialDevice, duration_s
from mechaway_sim.world import World

FW_VERSION = "sim-0.1"


def nmea_checksum(body: str) -> str:
    """The XOR of the characters between ``$`` and ``*``, two hex digits."""
    x = 0
    for ch in body.encode("ascii"):
        x ^= ch
    return f"{x:02X}"


def nmea(body: str) -> bytes:
    return f"${body}*{nmea_checksum(body)}\r\n".encode("ascii")


def _deg(value: float, lat: bool) -> tuple[str, str]:
    hemi = ("N" if value >= 0 else "S") if lat else ("E" if value >= 0 else "W")
    v = abs(value)
    d = int(v)
    minutes = (v - d) * 60
    return (f"{d:02d}{minutes:07.4f}" if lat else f"{d:03d}{minutes:07.4f}"), hemi


class PtySerial:
    """One device: its pty (while plugged in), its timer, its command reader."""

    def __init__(self, world: World, spec: SerialDevice, run_dir: Path) -> None:
        self.world = world
        self.spec = spec
        self.link = run_dir / spec.link
        self.master = -1
        self.slave = -1
        self.tty = ""
        self.framer = make_framer(spec.framing)
        self.seq = 0
        self.boots = 0
        self.sent = 0
        self.dropped = 0
        self.commands: list[dict[str, Any]] = []
        self.pins: dict[int, int] = {}
        self._loop: asyncio.AbstractEventLoop | None = None
        self._task: asyncio.Task[None] | None = None
        self.every = duration_s(spec.every)
        world.on_fault(spec.name, self._fault)

    # -- plugging -------------------------------------------------------------------------
    @property
    def plugged(self) -> bool:
        return self.master >= 0

    def plug(self) -> None:
        """A new pty at the link (the device boots: seq from 0, hello first)."""
        if self.plugged:
            return
        self.master, self.slave, self.tty = raw_pty()
        point(self.link, self.tty)
        self.framer = make_framer(self.spec.framing)
        self.seq = 0
        self.boots += 1
        if self._loop is not None:
            self._loop.add_reader(self.master, self._readable)
        if self.spec.protocol == "bridge":
            if self.spec.framing == "cobs":
                self._write(b"\x00")  # ends whatever garbage the line carried
            self._send(self._hello())
        self.world.emit({"event": "serial", "name": self.spec.name, "state": "plugged",
                         "tty": self.tty})  # fmt: skip

    def unplug(self) -> None:
        """The cable is pulled: the pty closes, the link goes away."""
        if not self.plugged:
            return
        if self._loop is not None:
            with contextlib.suppress(ValueError, RuntimeError):
                self._loop.remove_reader(self.master)
        for fd in (self.master, self.slave):
            with contextlib.suppress(OSError):
                os.close(fd)
        self.master = self.slave = -1
        with contextlib.suppress(FileNotFoundError):
            self.link.unlink()
        self.world.emit({"event": "serial", "name": self.spec.name, "state": "unplugged"})

    def _fault(self, fault: Fault, begins: bool) -> None:
        if fault.kind == "unplug":
            if begins:
                self.unplug()
            else:
                self.plug()

    # -- running --------------------------------------------------------------------------
    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self.plug()
        self._task = asyncio.create_task(self._run(), name=f"mechaway-sim.serial[{self.spec.name}]")

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        self.unplug()

    async def _run(self) -> None:
        clock = self.world.clock
        min_real = 1.0 / self.spec.max_rate
        while True:
            await asyncio.sleep(max(min_real, clock.real_in(self.every)))
            if not self.plugged or self.world.fault(self.spec.name, "silent") is not None:
                continue
            if self.spec.protocol == "bridge":
                self._send(self._reading())
            else:
                for line in self._nmea():
                    self._write(line)

    def _hello(self) -> dict[str, Any]:
        return {"v": 1, "t": "hello", "device": self.spec.device, "fw": FW_VERSION,
                "caps": ["pin", "pwm", "custom"], "max_frame": 256}  # fmt: skip

    def _reading(self) -> dict[str, Any]:
        values = {k: round(self.world.signal(sig, self.spec.name), 3)
                  for k, sig in self.spec.values.items()}  # fmt: skip
        msg = {"t": "reading", "seq": self.seq, "ts_ms": int(self.world.now() * 1000) & 0x7FFFFFFF,
               "values": values or {"alive": 1}}  # fmt: skip
        self.seq += 1
        return msg

    def _nmea(self) -> list[bytes]:
        w = self.world
        t = w.now()
        tod = w.clock.time_of_day(t)
        hh, mm, ss = int(tod // 3600), int(tod % 3600 // 60), tod % 60
        stamp = f"{hh:02d}{mm:02d}{ss:05.2f}"
        wobble = 0.00002 * math.sin(t / 300.0)
        lat, ns = _deg(self.spec.latitude + wobble, True)
        lon, ew = _deg(self.spec.longitude + wobble, False)
        sats = 8 + int(3 * math.sin(t / 1800.0))
        alt = 34.0 + w.rng.gauss(0, 0.5)
        gga = f"GPGGA,{stamp},{lat},{ns},{lon},{ew},1,{sats:02d},0.9,{alt:.1f},M,46.9,M,,"
        day = 1 + int((w.clock.start_tod + t) // 86400)
        rmc = f"GPRMC,{stamp},A,{lat},{ns},{lon},{ew},0.0,0.0,{day:02d}0625,,,A"
        return [nmea(gga), nmea(rmc)]

    # -- the wire -----------------------------------------------------------------------
    def _send(self, msg: dict[str, Any]) -> None:
        self._write(encode_message(self.spec.framing, msg))

    def _write(self, data: bytes) -> None:
        """What the port takes now; the rest is lost (a UART does not wait for a reader)."""
        if not self.plugged:
            return
        try:
            n = os.write(self.master, data)
        except (BlockingIOError, OSError):
            n = 0
        if n == len(data):
            self.sent += 1
        else:
            self.dropped += 1

    def _readable(self) -> None:
        try:
            data = os.read(self.master, 65536)
        except OSError:  # nobody holds the other end just now
            return
        for item in self.framer.feed(data):
            if isinstance(item, FrameError):
                if self.spec.protocol == "bridge":
                    self._send({"t": "error", "code": item.code})
                continue
            if self.spec.protocol != "bridge":
                continue
            try:
                cmd = decode_message(self.spec.framing, item)
            except ProtocolError as err:
                self._send({"t": "error", "code": err.code, "msg": str(err)[:60]})
                continue
            if cmd.get("t") == "cmd":
                self._command(cmd)

    def _command(self, cmd: dict[str, Any]) -> None:
        self.commands.append(cmd)
        op, ident = cmd.get("op"), cmd["id"]
        if op == "hello":
            self._send(self._hello())
        elif op in ("pin", "pwm"):
            pin, value = int(cmd.get("pin", -1)), int(cmd.get("value", -1))
            if not 0 <= pin <= 19:
                self._send({"t": "error", "id": ident, "code": "bad_pin", "msg": f"pin {pin}"})
                return
            self.pins[pin] = value
        elif op != "custom":
            self._send({"t": "error", "id": ident, "code": "bad_op", "msg": str(op)[:32]})
            return
        self._send({"t": "ack", "id": ident})

    def describe(self) -> dict[str, Any]:
        return {"protocol": self.spec.protocol, "framing": self.spec.framing,
                "link": str(self.link)}  # fmt: skip
