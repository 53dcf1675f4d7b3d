"""Rigs for the Modbus driver tests: a real pymodbus server over TCP or over RTU on a pty
pair, and a driver connected to it with short timeouts."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import pytest
import pytest_asyncio

from mechaway.drivers.base import parse_sections
from mechaway.drivers.modbus import ModbusDriver, ModbusSettings

from .modbus_sim import ModbusSim, PtyLine, TcpProxy, bits, blocks, regs

#: timings short enough for tests, long enough for a loaded 2-core machine
FAST: dict[str, Any] = {
    "timeout": 0.2, "reconnect_min": 0.05, "reconnect_max": 0.2,
    "unit_backoff_min": 0.3, "unit_backoff_max": 0.6,
}  # fmt: skip


def settings(**kw: Any) -> ModbusSettings:
    """Settings as a ``[modbus.t]`` section would give them (validated the same way)."""
    parsed = parse_sections({"modbus": {"t": {**FAST, **kw}}})["modbus"]["t"]
    assert isinstance(parsed, ModbusSettings)
    return parsed


def units() -> dict[int, Any]:
    """Units 1, 2 and 3 with a little of every table."""
    out = {}
    for u in (1, 2, 3):
        out[u] = blocks(
            coils=[bits(0, [True, False, True, True] + [False] * 12)],
            discrete=[bits(0, [False, True] + [False] * 14)],
            holding=[regs(0, [u * 100 + i for i in range(60)])],
            inputs=[regs(0, [u * 1000 + i for i in range(60)])],
        )
    return out


@dataclass
class Rig:
    sim: ModbusSim
    driver: ModbusDriver
    kind: str
    line: PtyLine | None = None
    proxy: TcpProxy | None = None

    def silence(self, unit: int) -> None:
        """``unit`` stops answering (TCP: the server waits; RTU: its frames never arrive)."""
        if self.line is not None:
            self.line.drop_units.add(unit)
        else:
            self.sim.silent.add(unit)

    def heard(self, unit: int) -> int:
        """Requests for ``unit`` sent by the driver (what reached the wire)."""
        return self.driver.unit(unit).requests


async def make_rig(
    kind: str, *, proxy: bool = False, sim_units: dict[int, Any] | None = None, **kw: Any
) -> Rig:
    sim = ModbusSim(sim_units or units())
    if kind == "tcp":
        port = await sim.start_tcp()
        prox = None
        if proxy:
            prox = TcpProxy(port)
            port = await prox.start()
        drv = ModbusDriver("t", settings(host="127.0.0.1", port=port, **kw))
        rig = Rig(sim, drv, kind, proxy=prox)
    else:
        line = PtyLine()
        line.start()
        await sim.start_rtu(line.server_path)
        drv = ModbusDriver("t", settings(serial_port=line.client_path, baudrate=115200, **kw))
        rig = Rig(sim, drv, kind, line=line)
    await drv.start()
    await drv.wait_connected(5)
    return rig


async def close_rig(rig: Rig) -> None:
    await rig.driver.close()
    await rig.sim.stop()
    if rig.proxy is not None:
        await rig.proxy.stop()
    if rig.line is not None:
        rig.line.close()


@pytest_asyncio.fixture(params=["tcp", "rtu"])
async def rig(request: pytest.FixtureRequest) -> AsyncIterator[Rig]:
    r = await make_rig(request.param)
    yield r
    await close_rig(r)


@pytest_asyncio.fixture
async def tcp_rig() -> AsyncIterator[Rig]:
    r = await make_rig("tcp")
    yield r
    await close_rig(r)
