"""The simulator's local socket: I2C buses and the GPIO header for the daemon's ``sim``
backends. The wire (one JSON object per line) is described in
``mechaway/drivers/simlink.py``, the client's side."""

from __future__ import annotations

import asyncio
import contextlib
import errno
import os
from typing import Any

import orjson

from mechaway.drivers.simlink import WIRE_VERSION
from mechaway_sim.gpio import Header
from mechaway_sim.i2c import I2CBuses

#: a client that sends a line longer than this is cut off (a line is a few hundred bytes)
MAX_LINE = 64 * 1024


class Conn(asyncio.Protocol):
    """One client connection: requests in, replies and events out."""

    def __init__(self, server: SimSocket) -> None:
        self.server = server
        self.transport: asyncio.Transport | None = None
        self.buf = bytearray()
        self.requests = 0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # uvloop's is no subclass
        self.server.conns.add(self)

    def connection_lost(self, exc: Exception | None) -> None:
        self.server.conns.discard(self)
        self.server.header.forget(self)
        self.transport = None

    def data_received(self, data: bytes) -> None:
        self.buf += data
        out = bytearray()
        while (nl := self.buf.find(b"\n")) >= 0:
            line = bytes(self.buf[:nl])
            del self.buf[: nl + 1]
            out += self.server.handle(self, line)
        if len(self.buf) > MAX_LINE and self.transport is not None:
            self.transport.close()
            return
        if out and self.transport is not None:
            self.transport.write(bytes(out))

    def event(self, event: dict[str, Any]) -> None:
        if self.transport is not None:
            self.transport.write(orjson.dumps(event) + b"\n")


class SimSocket:
    """The Unix socket server (``start``/``close``)."""

    def __init__(self, path: str, i2c: I2CBuses, header: Header, name: str) -> None:
        self.path = path
        self.i2c = i2c
        self.header = header
        self.name = name
        self.conns: set[Conn] = set()
        self._server: asyncio.AbstractServer | None = None
        self.requests = 0
        self.errors = 0

    async def start(self) -> None:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.path)
        loop = asyncio.get_running_loop()
        self._server = await loop.create_unix_server(lambda: Conn(self), self.path)
        os.chmod(self.path, 0o600)

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            for conn in list(self.conns):
                if conn.transport is not None:
                    conn.transport.close()
            await self._server.wait_closed()
            self._server = None
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.path)

    def handle(self, conn: Conn, line: bytes) -> bytes:
        """One request line -> its reply line."""
        self.requests += 1
        ident: Any = None
        try:
            req = orjson.loads(line)
            ident = req["i"]
            result = self._dispatch(conn, req)
            return orjson.dumps({"i": ident, "r": result}) + b"\n"
        except OSError as err:
            self.errors += 1
            return orjson.dumps({"i": ident, "e": err.errno or errno.EIO,
                                 "m": err.strerror or str(err)}) + b"\n"  # fmt: skip
        except (ValueError, KeyError, TypeError) as err:
            self.errors += 1
            text = f"bad request: {type(err).__name__}: {err}"
            return orjson.dumps({"i": ident, "e": errno.EINVAL, "m": text}) + b"\n"

    def _dispatch(self, conn: Conn, req: dict[str, Any]) -> Any:
        op = req["op"]
        h = self.header
        if op == "i2c":
            return self.i2c.xfer(int(req["bus"]), req["m"])
        if op == "gpio.write":
            h.write(int(req["pin"]), float(req["value"]), conn)
            return None
        if op == "gpio.read":
            return h.read(int(req["pin"]))
        if op == "gpio.setup":
            return h.setup(int(req["pin"]), str(req["function"]), str(req.get("pull", "floating")),
                           req.get("state"), conn)  # fmt: skip
        if op == "gpio.pwm":
            freq = req.get("frequency")
            h.pwm(int(req["pin"]), None if freq is None else float(freq), conn)
            return None
        if op == "gpio.watch":
            h.watch(int(req["pin"]), bool(req.get("on", True)), conn)
            return None
        if op == "gpio.release":
            h.release(int(req["pin"]), conn)
            return None
        if op == "hello":
            return {"sim": self.name, "version": WIRE_VERSION}
        raise OSError(errno.ENOSYS, f"unknown op {op!r}")
