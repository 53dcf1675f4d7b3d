"""The driver layer: the frame every bus kind (MQTT, serial, GPIO, I2C, Modbus) shares.

A driver is one class per kind, registered by name with its settings struct::

    class SerialSettings(DriverSettings):
        port: Annotated[str, msgspec.Meta(description="device path")]

    @register_driver("serial")
    class SerialDriver(Driver[SerialSettings]):
        Settings = SerialSettings
        ...

Each ``[serial.NAME]`` section of the config is validated once by that struct, with
located errors (``serial.arduino.baudrate: ...``); an unknown kind is an error. A kind is
found by importing ``mechaway.drivers.<kind>`` the first time it is named (a config
section, a node's connection): a new driver is a module and a registration, nothing in
the daemon or the settings. The heavy library (pyserial, pymodbus, ...) is imported by the
driver when a connection starts, not at registration.

What every kind gets from here:
- ``Connections``: the shared connections of a daemon, created on first use, started,
  closed, with their status; nodes reach them through ``Services.connection(DriverClass,
  name)`` (typed) or ``connection("kind", name)``.
- ``DriverStatus``: one status shape (kind, name, state, since, last error, reconnects,
  counters) that ``GET /api/v1/status`` and its ``problems`` read.
- ``Supervisor``: connect, lost, jittered exponential backoff, reset after a stable period,
  each kind of failure logged once per burst.
- ``Bus``: one transaction at a time on a shared bus, an optional gap between frames, and
  blocking calls on one thread per bus.
- ``ThreadBridge``: the one way a callback from a foreign thread (gpiozero, lgpio) enters
  the event loop.

Drivers know nothing of flows. Drivers that command actuators never replay a write made
while the connection was down: a stale "heater on" is worse than none (``NotConnected``
is raised to the node, which counts it). Telemetry may be spooled (MQTT does).
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import logging
import pkgutil
import random
import threading
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Annotated, Any, ClassVar, Generic, Protocol, TypeVar

import msgspec

from mechaway.errors import ConfigError, MechawayError, NotConnected, located
from mechaway.logs import BurstLog
from mechaway.tasks import OwnedTask

log = logging.getLogger("mechaway.drivers")

T = TypeVar("T")


# ---------------------------------------------------------------------------------------
# Settings
# ---------------------------------------------------------------------------------------
class DriverSettings(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """Base of every ``[KIND.NAME]`` section: the reconnect keys every driver has."""

    reconnect_min: Annotated[
        float,
        msgspec.Meta(gt=0, le=3600, description="first reconnect delay, seconds (jittered)"),
    ] = 0.5
    reconnect_max: Annotated[
        float,
        msgspec.Meta(gt=0, le=3600, description="longest reconnect delay, seconds"),
    ] = 30.0
    stable_after: Annotated[
        float,
        msgspec.Meta(
            gt=0,
            le=3600,
            description="seconds a connection must stay up before the backoff and the "
            "once-per-burst logging start afresh",
        ),
    ] = 10.0

    def __post_init__(self) -> None:
        if self.reconnect_min > self.reconnect_max:
            raise ValueError("reconnect_min must be <= reconnect_max")


S = TypeVar("S", bound=DriverSettings)


class Spools(Protocol):
    """Durable queues for telemetry a driver holds while its peer is away (MQTT's offline
    publishes). The daemon gives one backed by the SQLite file; tests may give none."""

    def open(self, kind: str, name: str, *, max_items: int, overflow: str) -> Any:
        """The spool of connection ``[kind.name]`` (reloaded with what it held)."""
        ...

    def pending(self, kind: str) -> list[str]:
        """Names of ``kind``'s connections that have spooled items waiting."""
        ...

    def pending_kinds(self) -> list[str]:
        """Kinds with spooled items waiting (their drivers load at start to drain them)."""
        ...


@dataclass(frozen=True, slots=True)
class DriverEnv:
    """What the daemon gives every driver: identity, paths, durable spools."""

    device_id: str = "mechaway"
    data_dir: Path = field(default_factory=lambda: Path("."))
    #: durable spools (None: a driver that spools keeps its queue in memory)
    spools: Spools | None = None


# ---------------------------------------------------------------------------------------
# Status
# ---------------------------------------------------------------------------------------
#: states a connection is in; ``problems`` lists every connection not ``connected``
#: (a ``Supervisor`` with ``states_by_kind`` names a failed attempt by its kind instead:
#: ``unreachable``, ``auth refused``...)
STATES = ("new", "connecting", "connected", "failed", "closed")


class DriverStatus:
    """The one status shape of every connection (``GET /api/v1/status`` -> connections)."""

    __slots__ = ("counters", "kind", "last_error", "name", "reconnects", "since", "state")

    def __init__(self, kind: str, name: str, counters: Iterable[str] = ()) -> None:
        self.kind = kind
        self.name = name
        self.state = "new"
        self.since = time.time()
        self.last_error: str | None = None
        self.reconnects = 0
        self.counters: dict[str, int] = dict.fromkeys(counters, 0)

    def set(self, state: str, error: str | None = None) -> None:
        """Enter ``state`` (``since`` moves only on a change); remember ``error``."""
        if state != self.state:
            self.state = state
            self.since = time.time()
        if error is not None:
            self.last_error = error

    def count(self, counter: str, n: int = 1) -> None:
        self.counters[counter] = self.counters.get(counter, 0) + n

    def as_dict(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "name": self.name,
            "state": self.state,
            "connected": self.state == "connected",
            "since": self.since,
            "last_error": self.last_error,
            "reconnects": self.reconnects,
            "counters": dict(self.counters),
        }


# ---------------------------------------------------------------------------------------
# The driver class and its registry
# ---------------------------------------------------------------------------------------
class Driver(Generic[S]):
    """One connection of a kind (a broker, a port, a bus, a Modbus link), shared by the
    nodes that name it. Subclasses set ``Settings`` and implement ``start``/``close``."""

    kind: ClassVar[str] = ""
    Settings: ClassVar[type[DriverSettings]] = DriverSettings
    #: False: one ``[kind]`` section (e.g. ``[gpio]``), known as connection ``default``
    named: ClassVar[bool] = True
    #: True: connection ``default`` exists without a section (its settings' defaults)
    implicit_default: ClassVar[bool] = False

    def __init__(self, name: str, settings: S, env: DriverEnv | None = None) -> None:
        self.name = name
        self.settings = settings
        self.env = env or DriverEnv()
        self.label = f"{self.kind}[{name}]" if self.named else self.kind
        self.health = DriverStatus(self.kind, name)
        self.log = logging.getLogger(f"mechaway.drivers.{self.kind}")
        self.burst = BurstLog(self.log)

    # -- settings -------------------------------------------------------------------------
    @classmethod
    def parse_settings(cls, data: Mapping[str, Any], where: str) -> DriverSettings:
        """Validate one section; ``ConfigError`` names the key (``serial.arduino.port: ...``)."""
        try:
            return msgspec.convert(dict(data), cls.Settings, strict=True)
        except msgspec.ValidationError as err:
            raise ConfigError(located(err, where)) from err

    @classmethod
    def preload(cls, env: DriverEnv) -> list[str]:
        """Connection names to start with the daemon although unconfigured (MQTT: those
        with publishes spooled before a restart). Called after the store opened."""
        return []

    # -- lifecycle ------------------------------------------------------------------------
    async def start(self) -> None:
        """Begin connecting in the background; never raises for a device that is absent
        (see ``status()``); ``ConfigError`` for what no retry can cure."""

    async def close(self, timeout: float = 5.0) -> None:
        """Release everything, bounded by ``timeout``. Idempotent."""

    def stopping(self) -> None:
        """The daemon is stopping (told before its flows stop, then ``close``): what the
        peer keeps for this client across a restart is kept (MQTT: a persistent
        session's subscriptions). A hot swap or a removed flow is not a stop."""

    async def __aenter__(self: D) -> D:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    async def _await_up(self, up: asyncio.Event, timeout: float) -> None:
        """Until ``up`` is set (the link is up); ``NotConnected`` naming the last error
        after ``timeout`` seconds."""
        try:
            await asyncio.wait_for(up.wait(), timeout)
        except TimeoutError:
            raise NotConnected(
                f"{self.label}: not connected after {timeout} s "
                f"({self.health.last_error or 'connecting'})"
            ) from None

    def status(self) -> dict[str, Any]:
        """JSON-ready: the common shape, plus what the kind adds (``extra_status``)."""
        return {**self.health.as_dict(), **self.extra_status()}

    def extra_status(self) -> dict[str, Any]:
        return {}


D = TypeVar("D", bound=Driver[Any])

_REGISTRY: dict[str, type[Driver[Any]]] = {}


def register_driver(kind: str) -> Callable[[type[D]], type[D]]:
    """Class decorator: ``@register_driver("serial")``. A second class for a kind fails."""

    def deco(cls: type[D]) -> type[D]:
        if not kind.isidentifier() or kind != kind.lower():
            raise ValueError(f"driver kind {kind!r} must be a lower-case identifier")
        old = _REGISTRY.get(kind)
        if old is not None and old is not cls:
            raise ValueError(
                f"driver kind {kind!r} is registered twice: {old.__module__}.{old.__name__}"
                f" and {cls.__module__}.{cls.__name__}"
            )
        cls.kind = kind
        _REGISTRY[kind] = cls
        return cls

    return deco


def known_kinds() -> list[str]:
    """Every driver kind this installation has (registered or importable by name)."""
    import mechaway.drivers as pkg

    found = {m.name for m in pkgutil.iter_modules(pkg.__path__) if not m.name.startswith("_")}
    found.discard("base")
    return sorted(found | set(_REGISTRY))


def driver_class(kind: str) -> type[Driver[Any]]:
    """The registered class of ``kind``, importing ``mechaway.drivers.<kind>`` on first
    use; ``KeyError`` naming the known kinds."""
    cls = _REGISTRY.get(kind)
    if cls is None and kind in known_kinds():
        importlib.import_module(f"mechaway.drivers.{kind}")
        cls = _REGISTRY.get(kind)
        if cls is None:
            raise KeyError(f"mechaway.drivers.{kind} registers no driver of kind {kind!r}")
    if cls is None:
        raise KeyError(f"no driver of kind {kind!r} (known: {', '.join(known_kinds())})")
    return cls


def registered_drivers() -> dict[str, type[DriverSettings]]:
    """``{kind: settings struct}`` of every driver (imports each driver's module: for
    documentation and schemas, not for the daemon's start). A module that registers no
    driver (one being written), and a kind registered from outside the package (a test's
    stand-in), are left out."""
    out = {}
    for kind in known_kinds():
        try:
            cls = driver_class(kind)
        except KeyError:
            continue
        if cls.__module__.startswith(f"{__package__}."):  # not a test's stand-in kind
            out[kind] = cls.Settings
    return out


def parse_sections(
    raw: Mapping[str, Any], source: str | None = None
) -> dict[str, dict[str, DriverSettings]]:
    """``{kind: {name: table}}`` from a config file -> validated settings per connection.

    A kind's value must be a table of tables (``[mqtt.plc]``), or for single-section kinds
    (``[gpio]``) a table; every error is one ``ConfigError`` naming the file and key.
    """
    prefix = f"{source}: " if source else ""
    out: dict[str, dict[str, DriverSettings]] = {}
    for kind, tables in raw.items():
        try:
            cls = driver_class(kind)
        except KeyError as err:
            raise ConfigError(f"{prefix}[{kind}]: {err.args[0]}") from None
        if not isinstance(tables, dict):
            raise ConfigError(
                f"{prefix}{kind}: expected a table [{kind}], got {_toml_type(tables)}"
            )
        if not cls.named:
            sections = {"default": tables}
        else:
            sections = tables
            for name, table in sections.items():
                if not isinstance(table, dict):
                    raise ConfigError(
                        f"{prefix}{kind}.{name}: expected a table [{kind}.{name}],"
                        f" got {_toml_type(table)}"
                    )
        parsed: dict[str, DriverSettings] = {}
        for name, table in sections.items():
            where = f"{kind}.{name}" if cls.named else kind
            try:
                parsed[name] = cls.parse_settings(table, where)
            except ConfigError as err:
                raise ConfigError(f"{prefix}{err}") from None
        out[kind] = parsed
    return out


def _toml_type(value: Any) -> str:
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, (int, float)):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "an array"
    return f"a {type(value).__name__}"


# ---------------------------------------------------------------------------------------
# The connections of a daemon
# ---------------------------------------------------------------------------------------
class Connections:
    """Every driver connection of one daemon, created and started on first use.

    ``configured``: the validated sections (``parse_sections``). Unconfigured names fail
    with ``KeyError`` except a kind's implicit ``default``.
    """

    def __init__(
        self,
        configured: Mapping[str, Mapping[str, DriverSettings]] | None = None,
        env: DriverEnv | None = None,
    ) -> None:
        self.configured = {k: dict(v) for k, v in (configured or {}).items()}
        self.env = env or DriverEnv()
        self._live: dict[tuple[str, str], Driver[Any]] = {}
        self._starting: dict[tuple[str, str], asyncio.Future[Driver[Any]]] = {}

    async def get(self, kind: str | type[D], name: str = "default") -> Any:
        """The started, shared connection ``[kind.name]``."""
        cls = driver_class(kind) if isinstance(kind, str) else kind
        key = (cls.kind, name)
        drv = self._live.get(key)
        if drv is not None:
            return drv
        pending = self._starting.get(key)
        if pending is not None:  # two nodes asked at once: one connection
            return await asyncio.shield(pending)
        settings = self.configured.get(cls.kind, {}).get(name)
        if settings is None:
            if not (name == "default" and (cls.implicit_default or not cls.named)):
                where = f"[{cls.kind}.{name}]" if cls.named else f"[{cls.kind}]"
                raise KeyError(f"no {where} connection is configured")
            settings = cls.parse_settings({}, f"{cls.kind}.{name}")
        fut: asyncio.Future[Driver[Any]] = asyncio.get_running_loop().create_future()
        self._starting[key] = fut
        try:
            drv = cls(name, settings, self.env)
            await drv.start()
        except BaseException as err:
            fut.set_exception(err)
            fut.exception()  # retrieved: only concurrent waiters see it
            raise
        finally:
            del self._starting[key]
        self._live[key] = drv
        fut.set_result(drv)
        return drv

    async def start_configured(self) -> None:
        """Start every configured connection, and those a kind preloads (spools to drain)."""
        kinds = set(self.configured)
        if self.env.spools is not None:
            kinds.update(k for k in self.env.spools.pending_kinds() if k in known_kinds())
        for kind in sorted(kinds):
            cls = driver_class(kind)
            names = set(self.configured.get(kind, {})) | set(cls.preload(self.env))
            for name in sorted(names):
                try:
                    await self.get(cls, name)
                except KeyError as err:
                    log.error("%s.%s: %s", kind, name, err.args[0])

    def stopping(self) -> None:
        """Tell every connection the daemon is stopping (``Driver.stopping``)."""
        for key, drv in self._live.items():
            try:
                drv.stopping()
            except Exception:
                log.exception("%s.%s: stopping failed", *key)

    def live(self) -> dict[tuple[str, str], Driver[Any]]:
        return dict(self._live)

    def status(self) -> dict[str, dict[str, Any]]:
        out = {}
        for (kind, name), drv in self._live.items():
            try:
                out[f"{kind}.{name}"] = drv.status()
            except Exception as err:  # a status bug must not break /status
                out[f"{kind}.{name}"] = {"kind": kind, "name": name, "state": "unknown",
                                         "last_error": f"status failed: {err!r}"}
        return out

    async def close(self, timeout: float = 5.0) -> None:
        for key, drv in list(self._live.items()):
            try:
                await asyncio.wait_for(drv.close(timeout), timeout + 1.0)
            except Exception:
                log.exception("closing %s.%s failed", *key)
        self._live.clear()


# ---------------------------------------------------------------------------------------
# The supervisor: connect, lost, backoff
# ---------------------------------------------------------------------------------------
class Backoff:
    """Jittered exponential delays: ``min * 2**n``, capped at ``max``, each drawn
    uniformly from its upper half (so a fleet restarted together does not reconnect in
    step)."""

    __slots__ = ("attempt", "hi", "lo")

    def __init__(self, lo: float, hi: float) -> None:
        self.lo, self.hi, self.attempt = lo, hi, 0

    def next(self) -> float:
        delay = min(self.hi, self.lo * 2 ** min(self.attempt, 30))
        self.attempt += 1
        return random.uniform(delay / 2, delay)

    def reset(self) -> None:
        self.attempt = 0


class LinkFailed(MechawayError):
    """A connection attempt failed: ``kind`` sorts it for the once-per-burst log
    (``unreachable``, ``refused``, ``auth refused``, ``protocol error``...).

    Also what ``lost`` may return for a link that ended: its text, with ``key`` to log it
    apart from other losses (a broker fault) and ``counter``."""

    def __init__(
        self, kind: str, message: str, counter: str | None = None, *, key: str | None = None
    ) -> None:
        super().__init__(message)
        self.kind = kind
        #: a counter of the driver's status to add one to
        self.counter = counter
        #: what it is logged once per burst as (default: ``kind``)
        self.key = key


L = TypeVar("L")


class Supervisor(Generic[L]):
    """Keeps one connection up: ``open()`` a link, ``up(link)``, wait until ``lost(link)``
    says why it ended, ``release(link)``, back off, again; until ``stop()``.

    The burst: failures since the connection was last stable. Each kind of failure is
    logged once per burst (a warning), the rest at debug; after ``stable_after`` seconds
    up, one line says it recovered, ``on_stable()`` runs (the driver's own once-per-burst
    logging starts afresh) and the backoff starts again from ``reconnect_min``.

    ``lost`` returns the reason as text, or a ``LinkFailed`` whose ``key`` and ``counter``
    sort it. ``states_by_kind``: a failed attempt leaves the state named by its kind
    (``unreachable``, ``auth refused``) rather than ``connecting``. ``target`` names the
    peer in the "connected" line.
    """

    def __init__(
        self,
        label: str,
        health: DriverStatus,
        settings: DriverSettings,
        *,
        open: Callable[[], Awaitable[L]],
        lost: Callable[[L], Awaitable[str | LinkFailed]],
        up: Callable[[L], None] | None = None,
        release: Callable[[L], Awaitable[None]] | None = None,
        logger: logging.Logger | None = None,
        on_stable: Callable[[], None] | None = None,
        states_by_kind: bool = False,
        target: str = "",
    ) -> None:
        self.label = label
        self.health = health
        self.settings = settings
        self.backoff = Backoff(settings.reconnect_min, settings.reconnect_max)
        self._open, self._lost, self._up, self._release = open, lost, up, release
        self._on_stable = on_stable
        self._states_by_kind = states_by_kind
        self._target = f" to {target}" if target else ""
        self._log = logger or log
        self._task = OwnedTask(f"{label}.supervisor")
        self._kinds: set[str] = set()
        self._failures = 0
        self._burst_since = 0.0
        self._connects = 0
        self.closing = False

    def start(self) -> None:
        self.health.set("connecting")
        self._task.start(self.run)

    async def stop(self) -> None:
        self.closing = True
        await self._task.stop()

    async def run(self) -> None:
        stable_after = self.settings.stable_after
        while not self.closing:
            link: L | None = None
            try:
                try:
                    link = await self._open()
                except LinkFailed as err:
                    self.failed(err.kind, str(err), key=err.key, counter=err.counter)
                except (OSError, TimeoutError) as err:
                    self.failed("unreachable", _os_text(err))
                except Exception as err:  # a library bug must not end the loop
                    self.failed("error", repr(err))
                else:
                    up_at = time.monotonic()
                    self._connected(link)
                    lost = asyncio.ensure_future(self._lost(link))
                    try:
                        done, _ = await asyncio.wait({lost}, timeout=stable_after)
                        if not done:
                            self.stable()
                        reason = await lost
                    finally:
                        if not lost.done():
                            lost.cancel()
                    if time.monotonic() - up_at >= stable_after:
                        self.backoff.reset()
                    if isinstance(reason, LinkFailed) and not self.closing:
                        self.failed("lost", str(reason), key=reason.key, counter=reason.counter)
                    elif not self.closing:
                        self.failed("lost", str(reason))
            finally:
                if link is not None and self._release is not None:
                    await self._release(link)
            if self.closing:
                return
            await asyncio.sleep(self.backoff.next())

    def _connected(self, link: L) -> None:
        self._connects += 1
        self.health.reconnects = max(0, self._connects - 1)
        self.health.set("connected")
        if self._failures:
            self._log.debug("%s: connected after %d failed attempts", self.label, self._failures)
        elif not self._kinds:
            self._log.info("%s: connected%s", self.label, self._target)
        if self._up is not None:
            try:
                self._up(link)
            except Exception:  # a bug here must not end reconnection
                self._log.exception("%s: setting up the connection failed", self.label)

    def failed(self, kind: str, message: str, *, key: str | None = None,
               counter: str | None = None) -> None:
        """An attempt failed or a link was lost: state, counters, once-per-burst log."""
        key = key or kind
        if kind != "lost":
            self.health.count("connect_failures")
            self._failures += 1
        if counter:
            self.health.count(counter)
        if not self._burst_since:
            self._burst_since = time.monotonic()
        state = kind if self._states_by_kind and kind != "lost" else "connecting"
        self.health.set(state, message)
        if key not in self._kinds:
            self._kinds.add(key)
            self._log.warning(
                "%s: %s: %s (retrying with backoff; logged once per burst)",
                self.label, kind, message,
            )
        else:
            self._log.debug("%s: %s: %s", self.label, kind, message)

    def stable(self) -> None:
        if self._kinds:
            self._log.info(
                "%s: connected and stable again after %d failed attempts in %.1f s",
                self.label, self._failures, time.monotonic() - self._burst_since,
            )
        self._kinds.clear()
        self._failures = 0
        self._burst_since = 0.0
        if self._on_stable is not None:
            self._on_stable()


def _os_text(err: BaseException) -> str:
    if isinstance(err, TimeoutError):
        return "timed out"
    if isinstance(err, OSError) and err.strerror:
        where = f" ({err.filename})" if err.filename else ""
        return f"{err.strerror}{where}"
    return str(err) or type(err).__name__


# ---------------------------------------------------------------------------------------
# A shared bus: one transaction at a time, a gap between frames, one thread
# ---------------------------------------------------------------------------------------
class Bus:
    """One physical bus (an I2C bus, an RS-485 line, a serial port).

    ``async with bus.transaction():`` holds the bus for one exchange (a write and its
    reply), waiting ``gap`` seconds after the previous one ended (Modbus RTU's 3.5
    characters, a slow device's recovery). ``await bus.call(fn, *args)`` runs a blocking
    call on the bus's own thread (one per bus: calls on it never overlap, and a stuck
    device stalls its bus, not the event loop or other buses).
    """

    def __init__(self, label: str, gap: float = 0.0) -> None:
        self.label = label
        self.gap = gap
        self._lock = asyncio.Lock()
        self._last_end = 0.0
        self._pool: ThreadPoolExecutor | None = None
        self.transactions = 0

    def transaction(self) -> contextlib.AbstractAsyncContextManager[None]:
        """Hold the bus for one exchange (a class, not a generator: a Modbus poll pays
        ~1.5 µs for it instead of ~15 µs)."""
        return _Transaction(self)

    @property
    def busy(self) -> bool:
        return self._lock.locked()

    async def call(self, fn: Callable[..., T], *args: Any) -> T:
        """``fn(*args)`` on this bus's thread (the caller should hold a transaction)."""
        if self._pool is None:
            self._pool = ThreadPoolExecutor(1, thread_name_prefix=f"mechaway-{self.label}")
        return await asyncio.get_running_loop().run_in_executor(self._pool, fn, *args)

    def close(self) -> None:
        """Stop the thread once its current call returns (a hung call is abandoned)."""
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)
            self._pool = None


class _Transaction:
    """``Bus.transaction()``: the lock, the gap since the previous frame, the count."""

    __slots__ = ("_bus",)

    def __init__(self, bus: Bus) -> None:
        self._bus = bus

    async def __aenter__(self) -> None:
        bus = self._bus
        await bus._lock.acquire()
        if bus.gap:
            try:
                # a loop's timers may fire up to a millisecond early (uvloop counts whole
                # ms): the gap is a device's need, so wait again for what is left
                while (wait := bus._last_end + bus.gap - time.monotonic()) > 0:  # noqa: ASYNC110
                    await asyncio.sleep(wait)
            except BaseException:  # cancelled while waiting: the bus is free again
                bus._lock.release()
                raise

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        bus = self._bus
        bus.transactions += 1
        bus._last_end = time.monotonic()
        bus._lock.release()


# ---------------------------------------------------------------------------------------
# Callbacks from foreign threads
# ---------------------------------------------------------------------------------------
class ThreadBridge:
    """The one door from a library's thread (gpiozero, lgpio, a serial reader) into the
    event loop: ``bridge.call(fn, *args)`` runs ``fn`` on the loop, soon, never on the
    caller's thread. Calls after the loop closed are dropped and counted."""

    __slots__ = ("_loop", "_thread", "dropped")

    def __init__(self, loop: asyncio.AbstractEventLoop | None = None) -> None:
        self._loop = loop or asyncio.get_running_loop()
        self._thread = threading.get_ident()
        self.dropped = 0

    def call(self, fn: Callable[..., Any], *args: Any) -> None:
        if threading.get_ident() == self._thread:
            self._loop.call_soon(fn, *args)
            return
        try:
            self._loop.call_soon_threadsafe(fn, *args)
        except RuntimeError:  # the loop is closed: the daemon is stopping
            self.dropped += 1

    def wrap(self, fn: Callable[..., Any]) -> Callable[..., None]:
        """A callable for a library's callback slot that posts ``fn`` into the loop."""

        def posted(*args: Any) -> None:
            self.call(fn, *args)

        return posted
