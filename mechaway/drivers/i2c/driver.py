"""The ``[i2c.NAME]`` driver: one I2C bus, its blocking calls on the bus's own thread, one
transaction at a time, devices that stop answering reported once per burst.

The bus itself comes from a factory (the backend seam): ``smbus2.SMBus(bus)`` for real,
an SMBus-compatible fake in tests (``mechaway.testing.fake_i2c``), the hardware
simulator's bus later (``backend = "sim"``: one more entry in ``BUS_FACTORIES``). Opening
the bus is supervised like any connection: ``/dev/i2c-1`` missing (the interface not
enabled) is retried with backoff and shown in the status, never a crash.

Errors are sorted where they happen:
- a device that does not answer (EREMOTEIO 121, EIO 5, ENXIO 6, ETIMEDOUT 110): retried
  ``retries`` times, then ``DeviceNotAnswering``; counted per address, logged when the
  device stops answering and when it answers again, not at every poll;
- the bus gone (ENODEV, EBADF, ENOENT): the link is lost, the supervisor reopens it;
- anything else (the adapter refuses a transfer type): ``I2CError`` for that call.
"""

from __future__ import annotations

import asyncio
import errno
import time
from collections.abc import Callable
from typing import Annotated, Any, Literal, TypeVar

import msgspec

from mechaway.drivers.base import (
    Bus,
    Driver,
    DriverEnv,
    DriverSettings,
    Supervisor,
    register_driver,
)
from mechaway.errors import MechawayError, NotConnected

T = TypeVar("T")

#: errno values meaning "the addressed device did not answer"
NO_ANSWER = frozenset({errno.EREMOTEIO, errno.EIO, errno.ENXIO, errno.ETIMEDOUT})
#: errno values meaning "the bus (the adapter's device file) is gone"
BUS_GONE = frozenset({errno.ENODEV, errno.EBADF, errno.ENOENT})
#: pause before retrying a transaction a device did not answer
RETRY_DELAY_S = 0.005


class I2CSettings(DriverSettings):
    """One ``[i2c.NAME]`` section: an I2C bus (``/dev/i2c-N``)."""

    bus: Annotated[
        int, msgspec.Meta(ge=0, le=255, description="the bus number: /dev/i2c-N (1 on a Pi)")
    ] = 1
    backend: Annotated[
        Literal["smbus2", "sim"],
        msgspec.Meta(description="how the bus is opened: smbus2 (the kernel's i2c-dev) or "
                     "sim (bus `bus` of the hardware simulator, over sim_socket)"),
    ] = "smbus2"
    sim_socket: Annotated[
        str | None,
        msgspec.Meta(description="backend sim: the simulator's socket (default: "
                     "$XDG_RUNTIME_DIR/mechaway-sim/sim.sock, else "
                     "/tmp/mechaway-sim-UID/sim.sock)"),
    ] = None
    retries: Annotated[
        int,
        msgspec.Meta(
            ge=0, le=10, description="extra attempts of a transaction a device did not answer"
        ),
    ] = 1
    gap: Annotated[
        float,
        msgspec.Meta(ge=0, le=1, description="seconds between transactions on this bus"),
    ] = 0.0


def _smbus2(settings: I2CSettings) -> Any:
    from smbus2 import SMBus

    return SMBus(settings.bus)


def _sim(settings: I2CSettings) -> Any:
    from mechaway.drivers.i2c.sim import SimSMBus

    return SimSMBus(settings.bus, settings.sim_socket)


#: backend name -> opener of an SMBus-compatible bus (blocking; run on the bus's thread)
BUS_FACTORIES: dict[str, Callable[[I2CSettings], Any]] = {"smbus2": _smbus2, "sim": _sim}


class I2CError(MechawayError):
    """An I2C transaction failed."""


class DeviceNotAnswering(I2CError):
    """The addressed device did not acknowledge (absent, unpowered, wrong address)."""


class DeviceHealth:
    """What the bus knows of one address: shown under the connection's ``devices``."""

    __slots__ = ("errors", "failing", "last_error", "no_answer", "since", "state", "transactions")

    def __init__(self) -> None:
        self.state = "ok"
        self.since = time.time()
        self.transactions = 0
        self.no_answer = 0
        self.errors = 0
        #: failed transactions in a row (the current burst)
        self.failing = 0
        self.last_error: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return {
            "state": self.state,
            "since": self.since,
            "transactions": self.transactions,
            "no_answer": self.no_answer,
            "errors": self.errors,
            "failing": self.failing,
            "last_error": self.last_error,
        }


def _text(err: OSError) -> str:
    return f"[Errno {err.errno}] {err.strerror or errno.errorcode.get(err.errno or 0, '?')}"


@register_driver("i2c")
class I2CDriver(Driver[I2CSettings]):
    """One I2C bus shared by the nodes that name it; ``transfer(addr, fn)`` runs
    ``fn(smbus)`` on the bus's thread inside a transaction."""

    Settings = I2CSettings
    #: ``connection: "default"`` works unconfigured: bus 1, the Pi's header bus
    implicit_default = True

    def __init__(
        self,
        name: str,
        settings: I2CSettings,
        env: DriverEnv | None = None,
        *,
        bus_factory: Callable[[I2CSettings], Any] | None = None,
    ) -> None:
        super().__init__(name, settings, env)
        self.health.counters.update(
            dict.fromkeys(
                ("connect_failures", "transactions", "retries", "no_answer", "device_errors"), 0
            )
        )
        self._factory = bus_factory or BUS_FACTORIES[settings.backend]
        self.bus = Bus(self.label, gap=settings.gap)
        self.devices: dict[int, DeviceHealth] = {}
        self._smbus: Any = None
        self._lost: asyncio.Future[str] | None = None
        self._up = asyncio.Event()
        self._sup: Supervisor[Any] = Supervisor(
            self.label, self.health, settings, open=self._open, lost=self._wait_lost,
            up=self._link_up, release=self._release, logger=self.log,
        )  # fmt: skip

    # -- lifecycle ------------------------------------------------------------------------
    async def start(self) -> None:
        self._sup.start()

    async def close(self, timeout: float = 5.0) -> None:
        await self._sup.stop()
        self.bus.close()
        self.health.set("closed")

    async def wait_connected(self, timeout: float) -> None:
        await asyncio.wait_for(self._up.wait(), timeout)

    async def _open(self) -> Any:
        return await self.bus.call(self._factory, self.settings)

    def _link_up(self, link: Any) -> None:
        self._smbus = link
        self._up.set()

    async def _wait_lost(self, link: Any) -> str:
        self._lost = asyncio.get_running_loop().create_future()
        return await self._lost

    async def _release(self, link: Any) -> None:
        self._smbus = None
        self._up.clear()
        try:
            await self.bus.call(link.close)
        except Exception as err:  # closing a bus that is gone may fail too
            self.log.debug("%s: closing the bus: %r", self.label, err)

    # -- transactions ---------------------------------------------------------------------
    def device(self, addr: int) -> DeviceHealth:
        dev = self.devices.get(addr)
        if dev is None:
            dev = self.devices[addr] = DeviceHealth()
        return dev

    async def transfer(self, addr: int, fn: Callable[[Any], T]) -> T:
        """``fn(smbus)`` on the bus's thread as one transaction (retried if the device at
        ``addr`` does not answer, so ``fn`` must be safe to repeat).

        Raises ``NotConnected`` (the bus is not open), ``DeviceNotAnswering``, or
        ``I2CError``; never a bare ``OSError``.
        """
        dev = self.device(addr)
        attempts = 1 + self.settings.retries
        for attempt in range(attempts):
            smbus = self._smbus
            if smbus is None:
                why = self.health.last_error or "not open yet"
                raise NotConnected(f"{self.label}: bus {self.settings.bus} is not open ({why})")
            try:
                async with self.bus.transaction():
                    result = await self.bus.call(fn, smbus)
            except OSError as err:
                code = err.errno
                if code in NO_ANSWER:
                    if attempt + 1 < attempts:
                        self.health.count("retries")
                        await asyncio.sleep(RETRY_DELAY_S)
                        continue
                    self._failed(addr, dev, "no answer", _text(err))
                    raise DeviceNotAnswering(
                        f"{self.label}: device 0x{addr:02x} does not answer ({_text(err)}; "
                        f"{attempts} attempts)"
                    ) from err
                if code in BUS_GONE:
                    self._bus_lost(_text(err))
                    raise NotConnected(f"{self.label}: the bus went away ({_text(err)})") from err
                self._failed(addr, dev, "error", _text(err))
                raise I2CError(f"{self.label}: device 0x{addr:02x}: {_text(err)}") from err
            except ValueError as err:  # smbus2's own checks (a block longer than 32 bytes)
                self._failed(addr, dev, "error", str(err))
                raise I2CError(f"{self.label}: device 0x{addr:02x}: {err}") from err
            self.health.count("transactions")
            dev.transactions += 1
            if dev.state != "ok":
                self.log.info(
                    "%s: device 0x%02x answers again after %d failed transactions",
                    self.label, addr, dev.failing,
                )  # fmt: skip
                dev.state, dev.since = "ok", time.time()
            dev.failing = 0
            return result
        raise AssertionError("unreachable")  # pragma: no cover

    def _failed(self, addr: int, dev: DeviceHealth, state: str, text: str) -> None:
        if state == "no answer":
            self.health.count("no_answer")
            dev.no_answer += 1
        else:
            self.health.count("device_errors")
            dev.errors += 1
        dev.failing += 1
        dev.last_error = text
        if dev.state != state:
            dev.state, dev.since = state, time.time()
            self.log.warning(
                "%s: device 0x%02x: %s (%s); retrying at each poll, logged once per burst",
                self.label, addr, state, text,
            )  # fmt: skip

    def _bus_lost(self, text: str) -> None:
        self._smbus = None
        self._up.clear()
        if self._lost is not None and not self._lost.done():
            self._lost.set_result(text)

    def extra_status(self) -> dict[str, Any]:
        return {
            "bus": self.settings.bus,
            "backend": self.settings.backend,
            "devices": {f"0x{a:02x}": d.as_dict() for a, d in sorted(self.devices.items())},
        }
