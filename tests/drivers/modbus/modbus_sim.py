"""A real pymodbus server for the Modbus tests (SimDevice/SimData, pymodbus 3.x's current
simulator API), with every request recorded at the server and fault switches:

- ``silent``: units whose requests arrive but are never answered (TCP: the request handler
  waits; RTU: the line relay drops the frame, as for a unit that is not on the bus);
- ``fail``: units that answer every request with a Modbus exception code;
- ``TcpProxy.freeze()``: the path stops carrying bytes without closing (an unplugged cable,
  half-open TCP);
- ``PtyLine``: an RTU line between two ptys, whose relay can corrupt the CRC of replies.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import os
import socket
import threading
import tty
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from pymodbus.constants import ExcCodes
from pymodbus.server import ModbusSerialServer, ModbusTcpServer
from pymodbus.simulator import DataType, SimData, SimDevice

Blocks = tuple[list[SimData], list[SimData], list[SimData], list[SimData]]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def regs(address: int, values: list[int]) -> SimData:
    """Raw registers from ``address``."""
    return SimData(address, values=values, datatype=DataType.REGISTERS)


def bits(address: int, values: list[bool]) -> SimData:
    return SimData(address, values=values, datatype=DataType.BITS)


def blocks(
    coils: list[SimData] | None = None,
    discrete: list[SimData] | None = None,
    holding: list[SimData] | None = None,
    inputs: list[SimData] | None = None,
) -> Blocks:
    """The four tables of a unit (each needs at least one block)."""
    return (
        coils or [bits(0, [False] * 16)],
        discrete or [bits(0, [False] * 16)],
        holding or [regs(0, [0] * 16)],
        inputs or [regs(0, [0] * 16)],
    )


@dataclass(frozen=True)
class Req:
    unit: int
    fc: int
    address: int | None
    count: int | None


@dataclass
class ModbusSim:
    """Units (``{unit: blocks}``) served over TCP (``start_tcp``) or RTU (``start_rtu``)."""

    units: dict[int, Blocks]
    requests: list[Req] = field(default_factory=list)
    silent: set[int] = field(default_factory=set)
    fail: dict[int, int] = field(default_factory=dict)
    port: int = 0
    server: Any = None
    _release: asyncio.Event | None = None

    def devices(self) -> list[SimDevice]:
        return [
            SimDevice(id=u, simdata=b, action=functools.partial(self._action, u))
            for u, b in self.units.items()
        ]

    async def _action(self, unit: int, *call: Any) -> ExcCodes | None:
        """SimDevice's action hook: (fc, start, address, count, registers, values)."""
        if unit in self.silent:
            assert self._release is not None
            await self._release.wait()  # never answered while the test runs
            return ExcCodes.DEVICE_FAILURE
        if unit in self.fail:
            return ExcCodes(self.fail[unit])
        return None

    def _trace_pdu(self, sending: bool, pdu: Any) -> Any:
        if not sending:
            self.requests.append(
                Req(pdu.dev_id, pdu.function_code, getattr(pdu, "address", None),
                    getattr(pdu, "count", None))
            )  # fmt: skip
        return pdu

    def count(self, unit: int | None = None, fc: int | None = None) -> int:
        return sum(
            1 for r in self.requests
            if (unit is None or r.unit == unit) and (fc is None or r.fc == fc)
        )  # fmt: skip

    async def start_tcp(self, port: int = 0) -> int:
        self._release = asyncio.Event()
        self.port = port or self.port or free_port()
        self.server = ModbusTcpServer(
            self.devices(), address=("127.0.0.1", self.port), trace_pdu=self._trace_pdu
        )
        await self.server.serve_forever(background=True)
        return self.port

    async def start_rtu(self, path: str) -> None:
        self._release = asyncio.Event()
        self.server = ModbusSerialServer(
            self.devices(), port=path, baudrate=115200, trace_pdu=self._trace_pdu
        )
        await self.server.serve_forever(background=True)

    async def stop(self) -> None:
        if self._release is not None:
            self._release.set()
        if self.server is not None:
            await self.server.shutdown()
            self.server = None
        await asyncio.sleep(0)


class TcpProxy:
    """127.0.0.1:``port`` -> ``target``; ``freeze()`` stops carrying bytes both ways
    without closing anything (and new connections are accepted, then carry nothing)."""

    def __init__(self, target: int) -> None:
        self.target = target
        self.port = 0
        self.frozen = False
        self._server: asyncio.Server | None = None
        self._writers: list[asyncio.StreamWriter] = []
        self._tasks: set[asyncio.Task[None]] = set()
        self.connections = 0

    async def start(self) -> int:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self.port

    def freeze(self) -> None:
        self.frozen = True

    def thaw(self) -> None:
        self.frozen = False

    async def _serve(self, r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        self.connections += 1
        self._writers.append(w)
        try:
            ur, uw = await asyncio.open_connection("127.0.0.1", self.target)
        except OSError:
            w.close()
            return
        self._writers.append(uw)
        pumps = [asyncio.ensure_future(self._pump(r, uw)), asyncio.ensure_future(self._pump(ur, w))]
        for t in pumps:
            self._tasks.add(t)
            t.add_done_callback(self._tasks.discard)
        await asyncio.wait(pumps, return_when=asyncio.FIRST_COMPLETED)
        for t in pumps:
            t.cancel()
        w.close()
        uw.close()

    async def _pump(self, r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        while data := await r.read(4096):
            if not self.frozen:
                w.write(data)

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
        for w in self._writers:
            w.close()
        for t in list(self._tasks):
            t.cancel()
        if self._tasks:
            await asyncio.wait(self._tasks, timeout=1)


def _raw_pty() -> tuple[int, int, str]:
    master, slave = os.openpty()
    tty.setraw(master)
    tty.setraw(slave)
    os.set_blocking(master, False)
    return master, slave, os.ttyname(slave)


class PtyLine:
    """An RTU line: the client opens ``client_path``, the server ``server_path``; a relay
    in the loop carries bytes between them. ``drop_units``: requests to these units never
    reach the server (units not on the line). ``corrupt``: replies whose CRC gets broken
    (a count of replies to spoil)."""

    def __init__(self) -> None:
        self.m1, self.s1, self.client_path = _raw_pty()
        self.m2, self.s2, self.server_path = _raw_pty()
        self.drop_units: set[int] = set()
        self.corrupt = 0
        self.cut = False
        self._loop: asyncio.AbstractEventLoop | None = None

    def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._loop.add_reader(self.m1, self._relay(self.m1, self.m2, self._request))
        self._loop.add_reader(self.m2, self._relay(self.m2, self.m1, self._reply))

    def _request(self, data: bytes) -> bytes:
        if self.cut or (data and data[0] in self.drop_units):
            return b""
        return data

    def _reply(self, data: bytes) -> bytes:
        if self.cut:
            return b""
        if self.corrupt and len(data) >= 4:
            self.corrupt -= 1
            return data[:-1] + bytes([data[-1] ^ 0xFF])
        return data

    @staticmethod
    def _relay(src: int, dst: int, hook: Callable[[bytes], bytes]) -> Callable[[], None]:
        def move() -> None:
            try:
                data = os.read(src, 4096)
            except OSError:
                return
            data = hook(data)
            if data:
                with contextlib.suppress(OSError):
                    os.write(dst, data)

        return move

    def close(self) -> None:
        if self._loop is not None:
            self._loop.remove_reader(self.m1)
            self._loop.remove_reader(self.m2)
        for fd in (self.m1, self.s1, self.m2, self.s2):
            with contextlib.suppress(OSError):
                os.close(fd)


class SimThread:
    """A ``ModbusSim`` served over TCP from its own thread and event loop (for tests whose
    own thread blocks, e.g. while driving a daemon subprocess)."""

    def __init__(self, sim: ModbusSim) -> None:
        self.sim = sim
        self.loop = asyncio.new_event_loop()
        self.port = free_port()
        self._thread = threading.Thread(target=self.loop.run_forever, daemon=True)

    def __enter__(self) -> SimThread:
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self.sim.start_tcp(self.port), self.loop).result(10)
        return self

    def __exit__(self, *exc: object) -> None:
        asyncio.run_coroutine_threadsafe(self.sim.stop(), self.loop).result(10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(10)
        self.loop.close()
