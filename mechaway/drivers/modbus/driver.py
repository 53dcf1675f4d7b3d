"""The Modbus driver: one ``[modbus.NAME]`` link (TCP or RTU) shared by the nodes naming it.

pymodbus (3.x) is imported when a connection starts. The driver uses the layer's pieces:
the ``Supervisor`` connects, notices the link is gone, backs off and reconnects (pymodbus'
own reconnect is off, so there is one owner of the link); the ``Bus`` puts one request at a
time on the wire, with ``frame_gap`` between frames; ``DriverStatus`` counts what happens.

What a request can meet, and what the driver does:

- a reply: returned; an *exception reply* (the device refuses: illegal address, busy...)
  raises ``ModbusExceptionReply`` with its code, counted in ``exceptions``; the unit is
  alive.
- no reply within ``timeout``: retried ``retries`` times, then ``ModbusTimeout``
  (``timeouts``). Bytes that came but made no valid reply are ``crc_errors`` (RTU frame
  whose CRC does not check) or ``bad_frames``.
- a unit that does not answer (or a gateway's exception 10/11 for it) is marked *dead*:
  ``ready(unit)`` is then False except for one probe at a time, spaced by a jittered
  backoff (``unit_backoff_min`` .. ``unit_backoff_max``), with no retries. So a dead unit
  costs the other units of the bus at most one ``timeout`` per probe (Node-RED's #446:
  one dead unit behind a gateway stalling every other).
- TCP only: ``drop_after`` requests in a row that hear nothing at all, from any unit, mean
  the peer is gone without closing (an unplugged cable, half-open TCP: Node-RED's #458):
  the link is dropped and reconnected; dead units are probed at once after a reconnect.
- no link: ``NotConnected`` at once. Nothing is queued, so a write made while the link is
  down is never replayed later.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Annotated, Any, Literal

import msgspec

from mechaway.drivers.base import (
    Backoff,
    Bus,
    Driver,
    DriverEnv,
    DriverSettings,
    LinkFailed,
    Supervisor,
    register_driver,
)
from mechaway.drivers.modbus.decode import BIT_TABLES, MAX_BITS, MAX_REGISTERS, crc16
from mechaway.errors import ConfigError, MechawayError, NotConnected

#: counters of every Modbus connection (its status ``counters``)
COUNTERS = (
    "requests", "replies", "exceptions", "timeouts", "crc_errors", "bad_frames",
    "bad_replies", "not_connected", "drops", "connect_failures",
)  # fmt: skip

EXCEPTION_NAMES = {
    1: "illegal function",
    2: "illegal data address",
    3: "illegal data value",
    4: "server device failure",
    5: "acknowledge",
    6: "server device busy",
    7: "negative acknowledge",
    8: "memory parity error",
    10: "gateway path unavailable",
    11: "gateway target device failed to respond",
}
#: a gateway saying the unit behind it did not answer: the unit is dead, the link is fine
GATEWAY_NO_UNIT = frozenset({10, 11})


class ModbusSettings(DriverSettings):
    """``[modbus.NAME]``: a TCP device or gateway (``host``) or an RTU line (``serial_port``)."""

    host: Annotated[
        Annotated[str, msgspec.Meta(min_length=1)] | None,
        msgspec.Meta(description="TCP: the device or gateway (name or address)"),
    ] = None
    port: Annotated[int, msgspec.Meta(ge=1, le=65535, description="TCP port")] = 502
    serial_port: Annotated[
        Annotated[str, msgspec.Meta(min_length=1)] | None,
        msgspec.Meta(description="RTU: the serial device, e.g. /dev/ttyUSB0"),
    ] = None
    baudrate: Annotated[
        int, msgspec.Meta(ge=300, le=4_000_000, description="RTU: bits per second")
    ] = 9600
    parity: Annotated[
        Literal["N", "E", "O"], msgspec.Meta(description="RTU: N(one), E(ven) or O(dd)")
    ] = "N"
    stopbits: Annotated[Literal[1, 2], msgspec.Meta(description="RTU: stop bits")] = 1
    bytesize: Annotated[Literal[7, 8], msgspec.Meta(description="RTU: data bits")] = 8
    framer: Annotated[
        Literal["auto", "socket", "rtu"],
        msgspec.Meta(description="auto: Modbus TCP over TCP, RTU over a serial port; rtu "
                     "with host: RTU frames over TCP (some serial gateways)"),
    ] = "auto"
    timeout: Annotated[
        float, msgspec.Meta(gt=0, le=60, description="seconds to wait for each reply")
    ] = 1.0
    retries: Annotated[
        int,
        msgspec.Meta(ge=0, le=10, description="times a request without a reply is sent "
                     "again (not for a unit already known dead)"),
    ] = 0
    frame_gap: Annotated[
        Annotated[float, msgspec.Meta(ge=0, le=1)] | None,
        msgspec.Meta(description="seconds of silence between frames; default: "
                     "3.5 characters at the baud rate for RTU (1.75 ms above 19200), 0 for "
                     "TCP"),
    ] = None
    drop_after: Annotated[
        int,
        msgspec.Meta(ge=1, le=1000, description="TCP: requests in a row with no reply "
                     "from any unit before the link is presumed dead and reconnected"),
    ] = 3
    unit_backoff_min: Annotated[
        float,
        msgspec.Meta(gt=0, le=3600, description="first pause, seconds, before a unit that "
                     "stopped answering is probed again (doubling, jittered)"),
    ] = 1.0
    unit_backoff_max: Annotated[
        float,
        msgspec.Meta(gt=0, le=3600, description="longest pause, seconds, between probes of "
                     "a unit that does not answer"),
    ] = 30.0

    def __post_init__(self) -> None:
        super().__post_init__()
        if (self.host is None) == (self.serial_port is None):
            raise ValueError("give host (Modbus TCP) or serial_port (RTU), not both or neither")
        if self.serial_port is not None and self.framer == "socket":
            raise ValueError("framer socket is Modbus TCP's: a serial port speaks rtu")
        if self.unit_backoff_min > self.unit_backoff_max:
            raise ValueError("unit_backoff_min must be <= unit_backoff_max")

    @property
    def tcp(self) -> bool:
        return self.host is not None

    def gap(self) -> float:
        """The pause between frames: ``frame_gap``, or RTU's 3.5 character times."""
        if self.frame_gap is not None:
            return self.frame_gap
        if self.tcp:
            return 0.0
        if self.baudrate > 19200:
            return 0.00175
        return 3.5 * (1 + self.bytesize + (self.parity != "N") + self.stopbits) / self.baudrate


# ---------------------------------------------------------------------------------------
# Errors a request raises (nodes count them and send them to their error port)
# ---------------------------------------------------------------------------------------
class ModbusError(MechawayError):
    """A request that did not get a good reply. ``kind`` is the status counter it went to."""

    kind = "error"

    def __init__(self, message: str, unit: int) -> None:
        super().__init__(message)
        self.unit = unit


class ModbusTimeout(ModbusError):
    """No reply (``timeouts``), or bytes that made no valid reply (``crc_errors``,
    ``bad_frames``)."""

    kind = "timeouts"

    def __init__(self, message: str, unit: int, kind: str = "timeouts") -> None:
        super().__init__(message, unit)
        self.kind = kind


class ModbusExceptionReply(ModbusError):
    """The device answered with a Modbus exception ``code``."""

    kind = "exceptions"

    def __init__(self, message: str, unit: int, code: int) -> None:
        super().__init__(message, unit)
        self.code = code


class ModbusBadReply(ModbusError):
    """A reply that does not fit the request (too few registers)."""

    kind = "bad_replies"


# ---------------------------------------------------------------------------------------
# Per-unit state
# ---------------------------------------------------------------------------------------
class UnitHealth:
    """One unit (device id) on the link: answering, or dead and probed on a backoff."""

    __slots__ = ("backoff", "dead", "failures", "last_error", "next_probe", "replies",
                 "requests", "since", "unit")  # fmt: skip

    def __init__(self, unit: int, backoff: Backoff) -> None:
        self.unit = unit
        self.dead = False
        self.since = time.time()
        self.failures = 0
        self.next_probe = 0.0
        self.backoff = backoff
        self.requests = 0
        self.replies = 0
        self.last_error: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return {
            "state": "not answering" if self.dead else "ok",
            "since": self.since,
            "failures": self.failures,
            "requests": self.requests,
            "replies": self.replies,
            "last_error": self.last_error,
            "next_probe_in": (
                round(max(0.0, self.next_probe - time.monotonic()), 3) if self.dead else None
            ),
        }


# ---------------------------------------------------------------------------------------
# The link: one pymodbus client for one connection attempt
# ---------------------------------------------------------------------------------------
@dataclass(eq=False)
class _Link:
    lost: asyncio.Future[str]
    client: Any = None
    #: what the last attempt heard (pymodbus' receive buffer as it grew)
    rx: bytes = b""
    closed: bool = False
    extra: dict[str, Any] = field(default_factory=dict)

    def drop(self, reason: str) -> None:
        self.closed = True
        if not self.lost.done():
            self.lost.set_result(reason)

    def trace_packet(self, sending: bool, data: bytes) -> bytes:
        if not sending:
            self.rx = data
        return data

    def trace_connect(self, connected: bool) -> None:
        if not connected:
            self.drop("connection closed")


_PM: Any = None


def _pymodbus() -> Any:
    """pymodbus, imported on first use; its own logging quieted (we count and report each
    failure once per burst; pymodbus would log every timeout, with frame dumps)."""
    global _PM
    if _PM is None:
        import pymodbus.client as pm_client
        import pymodbus.exceptions as pm_exc
        from pymodbus import FramerType

        lib_log = logging.getLogger("pymodbus.logging")
        if lib_log.level == logging.NOTSET:
            lib_log.setLevel(logging.CRITICAL)

        class NS:
            AsyncModbusTcpClient = pm_client.AsyncModbusTcpClient
            AsyncModbusSerialClient = pm_client.AsyncModbusSerialClient
            ModbusIOException = pm_exc.ModbusIOException
            ConnectionException = pm_exc.ConnectionException
            SOCKET = FramerType.SOCKET
            RTU = FramerType.RTU

        _PM = NS
    return _PM


Op = Callable[[Any, int, Any, int], Awaitable[Any]]


def _read_op(method: str) -> Op:
    def op(client: Any, address: int, count: Any, unit: int) -> Awaitable[Any]:
        fn: Callable[..., Awaitable[Any]] = getattr(client, method)
        return fn(address, count=count, device_id=unit)

    return op


_READS: dict[str, Op] = {
    "holding": _read_op("read_holding_registers"),
    "input": _read_op("read_input_registers"),
    "coil": _read_op("read_coils"),
    "discrete": _read_op("read_discrete_inputs"),
}


def _write_op(client: Any, address: int, values: Any, unit: int) -> Awaitable[Any]:
    table, vals = values
    if table == "coil":
        if len(vals) == 1:
            result: Awaitable[Any] = client.write_coil(address, vals[0], device_id=unit)
            return result
        result = client.write_coils(address, vals, device_id=unit)
        return result
    if len(vals) == 1:
        result = client.write_register(address, vals[0], device_id=unit)
        return result
    result = client.write_registers(address, vals, device_id=unit)
    return result


@register_driver("modbus")
class ModbusDriver(Driver[ModbusSettings]):
    """One Modbus TCP connection or RTU line; see the module docstring."""

    Settings = ModbusSettings

    def __init__(self, name: str, settings: ModbusSettings, env: DriverEnv | None = None) -> None:
        super().__init__(name, settings, env)
        self.health.counters.update(dict.fromkeys(COUNTERS, 0))
        self.bus = Bus(self.label, settings.gap())
        self._link: _Link | None = None
        self._units: dict[int, UnitHealth] = {}
        self._silent = 0  # requests in a row that heard nothing
        self._sup: Supervisor[_Link] | None = None
        self._up = asyncio.Event()
        if settings.tcp:
            self.where = f"{settings.host}:{settings.port}"
        else:
            s = settings
            self.where = f"{s.serial_port} {s.baudrate} {s.bytesize}{s.parity}{s.stopbits}"

    # -- lifecycle ------------------------------------------------------------------------
    async def start(self) -> None:
        """Connect in the background (``status()`` says how it goes); ``ConfigError`` if
        pymodbus is not installed."""
        if self._sup is not None:
            return
        try:
            _pymodbus()
        except ImportError as err:
            raise ConfigError(
                f"{self.label}: pymodbus is not installed (pip install 'mechaway[hardware]')"
            ) from err
        self._sup = Supervisor(
            self.label, self.health, self.settings, open=self._open, lost=self._lost,
            up=self._on_up, release=self._release, logger=self.log,
        )  # fmt: skip
        self._sup.start()

    async def close(self, timeout: float = 5.0) -> None:
        sup, self._sup = self._sup, None
        if sup is not None:
            await asyncio.wait_for(sup.stop(), timeout)
        self.bus.close()
        self.health.set("closed")

    @property
    def connected(self) -> bool:
        return self._link is not None and not self._link.closed

    async def wait_connected(self, timeout: float) -> None:
        """Until the link is up; ``NotConnected`` after ``timeout`` seconds."""
        await self._await_up(self._up, timeout)

    async def first_link(self) -> None:
        """While the very first connection attempt is in progress, wait for it (at most
        ``timeout``): a request made as the daemon starts is not an outage. Afterwards
        (the link was up, or an attempt failed) this returns at once."""
        if self.connected or self.health.last_error is not None:
            return
        with contextlib.suppress(NotConnected):
            await self.wait_connected(self.settings.timeout)

    async def _open(self) -> _Link:
        pm = _pymodbus()
        s = self.settings
        link = _Link(asyncio.get_running_loop().create_future())
        common: dict[str, Any] = {
            "timeout": s.timeout, "retries": 0, "reconnect_delay": 0,
            "trace_packet": link.trace_packet, "trace_connect": link.trace_connect,
            "name": self.label,
        }  # fmt: skip
        if s.tcp:
            framer = pm.RTU if s.framer == "rtu" else pm.SOCKET
            client = pm.AsyncModbusTcpClient(s.host, port=s.port, framer=framer, **common)
        else:
            client = pm.AsyncModbusSerialClient(
                s.serial_port, framer=pm.RTU, baudrate=s.baudrate, bytesize=s.bytesize,
                parity=s.parity, stopbits=s.stopbits, **common,
            )  # fmt: skip
        # the driver decides when a silent link is dead (drop_after), not pymodbus
        client.set_max_no_responses(2**31)
        link.client = client
        if not await client.connect():
            client.close()
            raise LinkFailed("unreachable", f"cannot connect to {self.where}")
        return link

    def _on_up(self, link: _Link) -> None:
        self._link = link
        self._silent = 0
        now = time.monotonic()
        for u in self._units.values():  # a new link: probe units that were dead at once
            if u.dead:
                u.next_probe = now
        self._up.set()

    async def _lost(self, link: _Link) -> str:
        return await link.lost

    async def _release(self, link: _Link) -> None:
        link.closed = True
        if self._link is link:
            self._link = None
            self._up.clear()
        link.client.close()

    # -- units ----------------------------------------------------------------------------
    def unit(self, unit: int) -> UnitHealth:
        u = self._units.get(unit)
        if u is None:
            s = self.settings
            u = self._units[unit] = UnitHealth(
                unit, Backoff(s.unit_backoff_min, s.unit_backoff_max)
            )
        return u

    def ready(self, unit: int) -> bool:
        """May ``unit`` be polled now? False while a dead unit waits for its next probe;
        True for the one caller that gets to probe it."""
        u = self._units.get(unit)
        if u is None or not u.dead:
            return True
        now = time.monotonic()
        if now < u.next_probe:
            return False
        u.next_probe = now + u.backoff.next()
        return True

    def _unit_failed(self, u: UnitHealth, text: str) -> None:
        u.failures += 1
        u.last_error = text
        if not u.dead:
            u.dead = True
            u.since = time.time()
            u.next_probe = time.monotonic() + u.backoff.next()
            self.log.warning(
                "%s: unit %d does not answer (%s); probing it with backoff, the other "
                "units are polled as usual", self.label, u.unit, text,
            )  # fmt: skip

    def _unit_ok(self, u: UnitHealth) -> None:
        """``u`` answered (a reply is counted by the caller; an exception reply here)."""
        if u.dead:
            u.dead = False
            u.since = time.time()
            u.backoff.reset()
            self.log.info("%s: unit %d answers again after %d failures", self.label, u.unit,
                          u.failures)  # fmt: skip
        u.failures = 0

    # -- requests -------------------------------------------------------------------------
    async def read(self, unit: int, table: str, address: int, count: int) -> list[Any]:
        """``count`` registers (ints) or bits (bools) of ``table`` from ``address``."""
        limit = MAX_BITS if table in BIT_TABLES else MAX_REGISTERS
        if not 1 <= count <= limit:
            raise ValueError(f"count {count} is outside 1..{limit}")
        resp = await self._request(unit, _READS[table], address, count)
        values: list[Any] = resp.bits if table in BIT_TABLES else resp.registers
        if len(values) < count:
            self.health.count("bad_replies")
            raise ModbusBadReply(
                f"unit {unit}: {table} {address}: asked for {count}, the reply holds "
                f"{len(values)}", unit,
            )  # fmt: skip
        return values if len(values) == count else values[:count]

    async def write(self, unit: int, table: str, address: int, values: Sequence[Any]) -> None:
        """Write registers (``holding``: ints 0..65535) or bits (``coil``: bools); function
        6/5 for one value, 16/15 for more. Never queued: ``NotConnected`` while down."""
        if table not in ("holding", "coil"):
            raise ValueError(f"table {table!r} is read-only (write holding or coil)")
        await self._request(unit, _write_op, address, (table, list(values)))

    async def _request(self, unit: int, op: Op, address: int, arg: Any) -> Any:
        u = self._units.get(unit) or self.unit(unit)
        tries = 1 if u.dead else 1 + self.settings.retries
        counters = self.health.counters
        async with self.bus.transaction():
            link = self._link
            if link is None or link.closed:
                counters["not_connected"] += 1
                raise NotConnected(
                    f"{self.label}: not connected ({self.health.last_error or 'connecting'})"
                )
            pm = _PM
            failure: ModbusTimeout | None = None
            for _ in range(tries):
                link.rx = b""
                u.requests += 1
                counters["requests"] += 1
                try:
                    resp = await op(link.client, address, arg, unit)
                except pm.ModbusIOException:
                    failure = self._no_reply(link, unit)
                    if link.closed:
                        break
                    continue
                except pm.ConnectionException as err:
                    counters["not_connected"] += 1
                    raise NotConnected(f"{self.label}: {err}") from None
                self._silent = 0
                if resp.isError():
                    code = int(getattr(resp, "exception_code", 0) or 0)
                    counters["exceptions"] += 1
                    text = f"unit {unit}: exception {code} ({EXCEPTION_NAMES.get(code, '?')})"
                    if code in GATEWAY_NO_UNIT:
                        self._unit_failed(u, text)
                    else:
                        self._unit_ok(u)
                    raise ModbusExceptionReply(text, unit, code)
                counters["replies"] += 1
                u.replies += 1
                if u.dead or u.failures:
                    self._unit_ok(u)
                return resp
            assert failure is not None
            self._unit_failed(u, str(failure))
            raise failure

    def _no_reply(self, link: _Link, unit: int) -> ModbusTimeout:
        """Classify an attempt that got no valid reply; drop a silent TCP link."""
        heard = link.rx
        timeout = self.settings.timeout
        if heard:
            self._silent = 0
            bad_crc = (not self.settings.tcp or self.settings.framer == "rtu") and len(
                heard
            ) >= 4 and crc16(heard[:-2]) != int.from_bytes(heard[-2:], "little")
            kind = "crc_errors" if bad_crc else "bad_frames"
            what = "a frame whose CRC does not check" if bad_crc else "no valid reply"
            self.health.count(kind)
            return ModbusTimeout(f"unit {unit}: {what} ({len(heard)} bytes)", unit, kind)
        self._silent += 1
        self.health.count("timeouts")
        if self.settings.tcp and self._silent >= self.settings.drop_after:
            self.health.count("drops")
            link.drop(
                f"no reply to {self._silent} requests in a row: the connection is presumed "
                "dead (half-open: cable or peer gone without closing)"
            )
            self._silent = 0
        return ModbusTimeout(f"unit {unit}: no reply within {timeout} s", unit)

    def extra_status(self) -> dict[str, Any]:
        return {
            "transport": ("tcp " if self.settings.tcp else "rtu ") + self.where,
            "frame_gap": self.bus.gap,
            "units": {str(n): u.as_dict() for n, u in sorted(self._units.items())},
            # read by the daemon's ``problems``: a dead unit behind a live link
            "problems": [
                f"unit {n} not answering since"
                f" {time.strftime('%H:%M:%S', time.localtime(u.since))}"
                + (f" ({u.last_error})" if u.last_error else "")
                for n, u in sorted(self._units.items())
                if u.dead
            ],
        }
