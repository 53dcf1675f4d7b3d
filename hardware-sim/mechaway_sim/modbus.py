"""Simulated Modbus devices on real pymodbus servers (3.x's SimDevice/SimData API): TCP on a
port, RTU on a pty the daemon opens like a USB RS-485 adapter.

- ``sdm630``: the Eastron meter, laid out by the Modbus driver's own ``eastron-sdm630``
  profile (input registers, float32, big-endian words): per phase voltage, current,
  active/apparent/reactive power, power factor; totals, frequency, energies. Each read
  computes the values from the world (so the power follows the fan and the heater). More
  than 80 registers in one request: exception 3, as the meter refuses more than 40
  parameters. Unmapped registers in between read as zero, as on the meter.
- ``plc``: coils 0..15 (outputs: an actuator wired to ``coil:SERVER:UNIT:N`` follows coil
  N), discrete inputs 0..15 (each coil's feedback contact), holding registers 0..31
  (memory: setpoints; 0 holds 180, 1 holds 260), input registers 0..7 (air_c x10, air_rh
  x10, outside_c x10, sun W/m², power W, soil % x10 as int16; simulated minutes since
  start; the coils as a word).

Faults of a server (the scenario's ``target`` is the server's name): ``silent`` (requests
are not answered: TCP holds them, RTU drops the frames on the line), ``exception`` (every
request is answered with the exception ``code``), ``noise`` (the meter's values).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import math
import os
import struct
import tty
from collections.abc import Callable
from pathlib import Path
from typing import Any

from pymodbus.constants import ExcCodes
from pymodbus.server import ModbusSerialServer, ModbusTcpServer
from pymodbus.simulator import DataType, SimData, SimDevice
from pymodbus.simulator.simutils import SimUtils

from mechaway.drivers.modbus import profiles
from mechaway_sim.scenario import PLC_COILS, ModbusServer
from mechaway_sim.world import World

SDM630_PROFILE = "eastron-sdm630"
SDM630_MAX_REGISTERS = 80
PLC_HOLDING = 32
PLC_INPUTS = 8
#: what a power factor of the loads looks like (motors and a heater together)
POWER_FACTOR = 0.97


def _bits(address: int, values: list[bool]) -> SimData:
    return SimData(address, values=values, datatype=DataType.BITS)


def _regs(address: int, values: list[int]) -> SimData:
    return SimData(address, values=values, datatype=DataType.REGISTERS)


def _u16(value: float) -> int:
    return max(-32768, min(32767, round(value))) & 0xFFFF


class Sdm630:
    """One meter (a unit of a server)."""

    def __init__(self, world: World, server: str) -> None:
        self.world = world
        self.server = server
        prof = profiles.load(SDM630_PROFILE)
        #: register address -> (value name, word 0 or 1)
        self.layout: dict[int, tuple[str, int]] = {}
        top = 0
        for r in prof.reads:
            self.layout[r.address] = (r.name, 0)
            self.layout[r.address + 1] = (r.name, 1)
            top = max(top, r.address + 2)
        self.size = top
        self.demand_max = 0.0
        self.reads = 0

    def device(self, unit: int, action: Callable[..., Any]) -> SimDevice:
        return SimDevice(
            id=unit,
            simdata=([_bits(0, [False] * 16)], [_bits(0, [False] * 16)],
                     [_regs(0, [0] * 0x30)], [_regs(0, [0] * self.size)]),
            action=action,
        )

    def values(self) -> dict[str, float]:
        w = self.world
        noise = w.fault(self.server, "noise")
        sigma = noise.sigma if noise is not None else 0.0
        model = w.sync()
        sig = model.signals
        out: dict[str, float] = {}
        mains = model.spec.mains_v
        volts, amps, watts = [], [], []
        for n in (1, 2, 3):
            v = mains * (1 + 0.004 * math.sin(model.t / 900.0 + n)) + w.rng.gauss(0, 0.2 + sigma)
            p = max(0.0, sig[f"power_l{n}_w"] + w.rng.gauss(0, sigma * 20))
            s = p / POWER_FACTOR
            q = math.sqrt(max(0.0, s * s - p * p))
            i = s / v
            volts.append(v)
            amps.append(i)
            watts.append(p)
            out.update({f"voltage_l{n}": v, f"current_l{n}": i, f"power_l{n}": p,
                        f"apparent_power_l{n}": s, f"reactive_power_l{n}": q,
                        f"power_factor_l{n}": POWER_FACTOR,
                        f"phase_angle_l{n}": math.degrees(math.acos(POWER_FACTOR))})  # fmt: skip
        total = sum(watts)
        self.demand_max = max(self.demand_max, total)
        kwh = model.energy_kwh
        out.update(
            voltage_ln_avg=sum(volts) / 3, current_avg=sum(amps) / 3, current_sum=sum(amps),
            power_total=total, apparent_power_total=total / POWER_FACTOR,
            reactive_power_total=total / POWER_FACTOR * math.sin(math.acos(POWER_FACTOR)),
            power_factor_total=POWER_FACTOR,
            phase_angle_total=math.degrees(math.acos(POWER_FACTOR)),
            frequency=50.0 + w.rng.gauss(0, 0.01), import_energy=kwh, export_energy=0.0,
            import_reactive_energy=kwh * 0.25, export_reactive_energy=0.0,
            apparent_energy=kwh / POWER_FACTOR, power_demand=total,
            power_demand_max=self.demand_max,
            voltage_l1_l2=(volts[0] + volts[1]) / 2 * math.sqrt(3),
            voltage_l2_l3=(volts[1] + volts[2]) / 2 * math.sqrt(3),
            voltage_l3_l1=(volts[2] + volts[0]) / 2 * math.sqrt(3),
            voltage_ll_avg=sum(volts) / 3 * math.sqrt(3),
            current_n=abs(amps[0] - amps[1]) * 0.5, total_energy=kwh,
            total_reactive_energy=kwh * 0.25,
        )  # fmt: skip
        return out

    def fill(self, registers: list[int], start: int, address: int, count: int) -> None:
        """Write the current values into the requested span of the input table."""
        self.reads += 1
        values = self.values()
        words: dict[str, tuple[int, int]] = {}
        for reg in range(address, address + count):
            slot = self.layout.get(reg)
            if slot is None:
                registers[reg - start] = 0
                continue
            name, half = slot
            pair = words.get(name)
            if pair is None:
                pair = words[name] = struct.unpack(">HH", struct.pack(">f", values[name]))
            registers[reg - start] = pair[half]


class Plc:
    """One PLC unit (see the module docstring)."""

    def __init__(self, world: World, server: str, unit: int, wired: dict[int, str]) -> None:
        self.world = world
        self.server = server
        self.unit = unit
        self.wired = wired
        self.coils = [False] * PLC_COILS
        self.writes = 0

    def device(self, action: Callable[..., Any]) -> SimDevice:
        holding = [0] * PLC_HOLDING
        holding[0], holding[1] = 180, 260
        return SimDevice(
            id=self.unit,
            simdata=([_bits(0, [False] * PLC_COILS)], [_bits(0, [False] * PLC_COILS)],
                     [_regs(0, holding)], [_regs(0, [0] * PLC_INPUTS)]),
            action=action,
        )

    def coils_written(self, address: int, values: list[bool]) -> None:
        self.writes += 1
        for i, v in enumerate(values):
            n = address + i
            if 0 <= n < PLC_COILS:
                self.coils[n] = bool(v)
                name = self.wired.get(n)
                if name is not None:
                    self.world.actuate(name, 1.0 if v else 0.0, f"{self.server} coil {n}")

    def inputs(self) -> list[int]:
        model = self.world.sync()
        s = model.signals
        word = sum(1 << i for i, c in enumerate(self.coils) if c)
        return [_u16(s["air_c"] * 10), _u16(s["air_rh"] * 10), _u16(s["outside_c"] * 10),
                _u16(s["sun_w_m2"]), _u16(s["power_w"]), _u16(s["soil_pct"] * 10),
                int(model.t // 60) & 0xFFFF, word]  # fmt: skip


class ModbusSim:
    """One scenario ``[[modbus]]`` server: its units on TCP or on an RTU pty."""

    def __init__(self, world: World, spec: ModbusServer, run_dir: Path) -> None:
        self.world = world
        self.spec = spec
        self.run_dir = run_dir
        self.units: dict[int, Sdm630 | Plc] = {}
        for u in spec.units:
            if u.device == "sdm630":
                self.units[u.unit] = Sdm630(world, spec.name)
            else:
                wired = {}
                for a in world.sc.actuators:
                    kind, server, unit, num = a.source()
                    if kind == "coil" and server == spec.name and unit == u.unit:
                        wired[num] = a.name
                self.units[u.unit] = Plc(world, spec.name, u.unit, wired)
        self.server: Any = None
        self.port = 0
        self.line: PtyLine | None = None
        self.requests = 0

    @property
    def link(self) -> Path:
        return self.run_dir / self.spec.link

    def devices(self) -> list[SimDevice]:
        out = []
        for unit, dev in self.units.items():
            action = functools.partial(self._action, unit)
            if isinstance(dev, Sdm630):
                out.append(dev.device(unit, action))
            else:
                out.append(dev.device(action))
        return out

    async def _action(  # noqa: PLR0917 (pymodbus' SimAction, positional)
        self, unit: int, fc: int, start: int, address: int, count: int,
        registers: list[int], values: list[Any] | None,
    ) -> ExcCodes | None:  # fmt: skip
        """pymodbus' hook, before a request touches the tables: faults, live values."""
        self.requests += 1
        name = self.spec.name
        if self.world.fault(name, "silent") is not None:
            # held until the fault ends (the client has long given up); RTU frames are
            # dropped on the line before they get here
            while self.world.fault(name, "silent") is not None:  # noqa: ASYNC110
                await asyncio.sleep(0.05)
            return ExcCodes.DEVICE_BUSY
        fault = self.world.fault(name, "exception")
        if fault is not None:
            return ExcCodes(fault.code)
        dev = self.units[unit]
        if isinstance(dev, Sdm630):
            if fc == 4:
                if count > SDM630_MAX_REGISTERS:
                    return ExcCodes.ILLEGAL_VALUE
                dev.fill(registers, start, address, count)
            return None
        if fc in (5, 15) and values is not None:
            dev.coils_written(address, [bool(v) for v in values])
        elif fc == 2:  # the feedback contacts follow the coils
            registers[0 : (PLC_COILS + 15) // 16] = SimUtils.bitsToRegisters(list(dev.coils))
        elif fc == 4:
            regs = dev.inputs()
            for reg in range(address, min(address + count, PLC_INPUTS)):
                registers[reg - start] = regs[reg]
        return None

    async def start(self) -> None:
        if self.spec.transport == "tcp":
            self.port = self.spec.port or _free_port()
            self.server = ModbusTcpServer(self.devices(), address=(self.spec.host, self.port))
        else:
            self.line = PtyLine(self.link, drop=lambda: self.world.fault(self.spec.name,
                                                                         "silent") is not None)
            self.line.start()
            self.server = ModbusSerialServer(self.devices(), port=self.line.server_path,
                                             baudrate=115200)  # fmt: skip
        await self.server.serve_forever(background=True)

    async def close(self) -> None:
        if self.server is not None:
            with contextlib.suppress(Exception):
                await self.server.shutdown()
            self.server = None
        if self.line is not None:
            self.line.close()
            self.line = None

    def describe(self) -> dict[str, Any]:
        where = (f"{self.spec.host}:{self.port}" if self.spec.transport == "tcp"
                 else str(self.link))  # fmt: skip
        units = {str(u): type(d).__name__.lower() for u, d in self.units.items()}
        return {"transport": self.spec.transport, "at": where, "units": units}


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def raw_pty() -> tuple[int, int, str]:
    """A pty pair in raw mode, the master non-blocking: (master, slave, slave path)."""
    master, slave = os.openpty()
    tty.setraw(master)
    tty.setraw(slave)
    os.set_blocking(master, False)
    return master, slave, os.ttyname(slave)


def point(link: Path, target: str) -> None:
    """Make ``link`` a symlink to ``target``, atomically (a by-id link that moves)."""
    tmp = link.with_name(link.name + ".new")
    with contextlib.suppress(FileNotFoundError):
        tmp.unlink()
    os.symlink(target, tmp)
    os.replace(tmp, link)


class PtyLine:
    """An RS-485 line between two ptys: the daemon opens ``link`` (the first pty), the
    RTU server the second; a relay on the loop carries bytes both ways (``drop()``: the
    requests are lost on the line, a silent device)."""

    def __init__(self, link: Path, drop: Callable[[], bool]) -> None:
        self.link = link
        self.drop = drop
        self.m1, self.s1, path1 = raw_pty()
        self.m2, self.s2, self.server_path = raw_pty()
        point(link, path1)
        self._loop: asyncio.AbstractEventLoop | None = None

    def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._loop.add_reader(self.m1, self._move, self.m1, self.m2, True)
        self._loop.add_reader(self.m2, self._move, self.m2, self.m1, False)

    def _move(self, src: int, dst: int, request: bool) -> None:
        try:
            data = os.read(src, 4096)
        except OSError:
            return
        if request and self.drop():
            return
        with contextlib.suppress(OSError):
            os.write(dst, data)

    def close(self) -> None:
        if self._loop is not None:
            for fd in (self.m1, self.m2):
                self._loop.remove_reader(fd)
        for fd in (self.m1, self.s1, self.m2, self.s2):
            with contextlib.suppress(OSError):
                os.close(fd)
        with contextlib.suppress(FileNotFoundError):
            self.link.unlink()
