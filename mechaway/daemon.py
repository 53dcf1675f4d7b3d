"""Composition root: event loop, signals, sd_notify, store, engine, watcher, API, drivers."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import socket
import ssl
import sys
import time
from collections.abc import Callable, Coroutine, Mapping
from pathlib import Path
from typing import Any

from mechaway import __version__
from mechaway.drivers.base import Connections, DriverEnv
from mechaway.errors import ConfigError
from mechaway.nodes.context import Services
from mechaway.runtime.engine import Engine
from mechaway.runtime.manager import FlowDirWatcher, FlowManager
from mechaway.settings import Settings, is_loopback, parse_listen
from mechaway.store.context import ContextKeeper
from mechaway.store.db import Database
from mechaway.store.flows import FlowStore
from mechaway.store.maintenance import Maintenance
from mechaway.store.spool import SqliteSpools
from mechaway.tasks import OwnedTask

log = logging.getLogger("mechaway.daemon")


def setup_logging(level: str) -> None:
    """Plain lines on stderr; journald adds its own timestamps under systemd."""
    fmt = "%(levelname)s %(name)s: %(message)s"
    if "JOURNAL_STREAM" not in os.environ:
        fmt = "%(asctime)s " + fmt
    logging.basicConfig(level=level.upper(), format=fmt, stream=sys.stderr, force=True)
    # gmqtt logs every packet at INFO; the driver reports what matters itself
    logging.getLogger("gmqtt").setLevel(logging.WARNING)
    # aiohttp logs each malformed request (bad method, oversized header, ...) as an ERROR
    # with a traceback: anyone who can connect could flood the journal and wear the card
    server_log = logging.getLogger("aiohttp.server")
    if not any(isinstance(f, BadRequestLog) for f in server_log.filters):
        server_log.addFilter(BadRequestLog())


class BadRequestLog(logging.Filter):
    """aiohttp's "Error handling request" records as one warning line, once per burst.

    The app's own handlers never get here (the API's middleware turns every failure into
    a JSON error and logs it itself); what remains is HTTP that could not be parsed.
    """

    def __init__(self, window_s: float = 10.0) -> None:
        super().__init__()
        self.window_s = window_s
        self._until = 0.0
        self._suppressed = 0

    def filter(self, record: logging.LogRecord) -> bool:
        now = time.monotonic()
        if now < self._until:
            self._suppressed += 1
            return False
        exc = record.exc_info[1] if record.exc_info else None
        text = record.getMessage()
        if exc is not None:
            text = f"{text}: {' '.join(str(exc).split())[:200] or type(exc).__name__}"
        if self._suppressed:
            text += f" ({self._suppressed} similar in the last burst not logged)"
        self._until, self._suppressed = now + self.window_s, 0
        record.msg, record.args = "%s", (text,)
        record.exc_info = record.exc_text = None
        if record.levelno > logging.WARNING:
            record.levelno, record.levelname = logging.WARNING, "WARNING"
        return True


def sd_notify(state: str) -> None:
    """Tell systemd (Type=notify) about our state; a no-op outside systemd."""
    addr = os.environ.get("NOTIFY_SOCKET")
    if not addr:
        return
    if addr.startswith("@"):
        addr = "\0" + addr[1:]
    with contextlib.suppress(OSError), socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as s:
        s.connect(addr)
        s.sendall(state.encode())


#: a node whose last error is this recent is listed among the problems
FAILING_WINDOW_S = 60.0


def problems(
    store: Mapping[str, Any],
    connections: Mapping[str, Mapping[str, Any]],
    file_errors: Mapping[str, str],
    flows: Mapping[str, Mapping[str, Any]] | None = None,
    *,
    now: float | None = None,
) -> list[str]:
    """What an operator should look at now, one line each (empty: all is well): the
    details stay in their sections of the status."""
    found = []
    now = time.time() if now is None else now
    if store.get("trouble"):
        since = store.get("trouble_since")
        when = ""
        if since:
            when = f" since {time.strftime('%Y-%m-%d %H:%M:%S', time.localtime(since))}"
        found.append(f"store: {store['trouble']}{when}: writes are refused")
    for name, conn in connections.items():
        if conn.get("state") != "connected":
            why = conn.get("last_error")
            found.append(f"{name}: {conn.get('state')}" + (f" ({why})" if why else ""))
        for line in conn.get("problems") or ():  # what a connection says of itself
            found.append(f"{name}: {line}")
    if file_errors:
        found.append(f"flow files: {len(file_errors)} rejected (see flow_file_errors)")
    for fid, flow in (flows or {}).items():
        for nid, node in (flow.get("nodes") or {}).items():
            last = node.get("last_error_ts") or 0.0
            if node.get("errors") and now - last <= FAILING_WINDOW_S:
                text = " ".join(str(node.get("last_error") or "").split())[:120]
                found.append(
                    f"flow {fid}: node {nid} failing ({node['errors']} errors,"
                    f" last {max(0, int(now - last))}s ago: {text})"
                )
    return found


def watchdog_interval(env: Mapping[str, str] | None = None) -> float | None:
    """Seconds between ``WATCHDOG=1`` pings when systemd asks for them (``WatchdogSec=``
    sets ``WATCHDOG_USEC``): half the timeout, as sd_watchdog_enabled(3) advises."""
    env = os.environ if env is None else env
    usec, pid = env.get("WATCHDOG_USEC", ""), env.get("WATCHDOG_PID", "")
    if not usec.isdigit() or int(usec) == 0 or (pid and pid != str(os.getpid())):
        return None
    return int(usec) / 2e6


async def run_watchdog(
    interval: float, trouble: Callable[[], str | None], notify: Callable[[str], None]
) -> None:
    """Ping systemd's watchdog from the event loop while ``trouble()`` finds nothing.

    A wedged loop sends no ping; a dead store writer (nothing more would reach the disk)
    stops the pings on purpose: either way systemd restarts the service after
    ``WatchdogSec``, where a restart is the cure.
    """
    while True:
        why = trouble()
        if why is not None:
            log.error("watchdog: %s; no more pings, systemd will restart the service", why)
            return
        notify("WATCHDOG=1")
        await asyncio.sleep(interval)


def run(main: Callable[[], Coroutine[Any, Any, int]]) -> int:
    """Run ``main`` on uvloop where it is installed (not on armv7), else asyncio's loop."""
    try:
        import uvloop
    except ImportError:
        return asyncio.run(main())
    return uvloop.run(main())


class Daemon:
    """One mechaway daemon: everything it owns is started and stopped here."""

    def __init__(self, settings: Settings, *, flows_dir: Path | None = None) -> None:
        self.settings = settings
        self.flows_dir = flows_dir or (
            Path(settings.flows.dir).expanduser() if settings.flows.dir else None
        )
        self.db = Database(
            settings.db_path, commit_interval=settings.store.commit_interval_ms / 1000
        )
        self.store = FlowStore(self.db)
        self.services = Services(
            device_id=settings.device.id, data_dir=settings.data_dir, store=self.db
        )
        self.engine = Engine(self.services, stop_timeout=settings.engine.stop_timeout)
        #: node state of ``persist: true`` nodes: restored on create, saved on retire/periodically
        self.contexts = ContextKeeper(self.db, interval=settings.store.context_interval_s)
        self.contexts.attach(self.engine)
        self.maintenance = Maintenance(self.db)
        self.manager = FlowManager(self.engine, self.store)
        self.manager.on_deleted.append(self.contexts.forget)
        self.watcher: FlowDirWatcher | None = None
        #: the hub sync client (``mechaway.hub.edge.HubSync``), only when ``[hub] url`` is set
        self.hub: Any = None
        self._runner: Any = None
        self._api_sock: socket.socket | None = None
        self._api_task: asyncio.Task[None] | None = None
        self._stop = asyncio.Event()
        self._started = time.monotonic()
        self.listen_port: int | None = None
        self.packs: Any = None
        self._packs_task = OwnedTask("mechaway.plugins.watcher")
        self._watchdog = OwnedTask("mechaway.watchdog")
        #: every driver connection ([mqtt.*], [serial.*], [gpio], ...), started on first use
        self.drivers = Connections(
            settings.drivers,
            DriverEnv(
                device_id=settings.device.id,
                data_dir=settings.data_dir,
                spools=SqliteSpools(self.db),
            ),
        )
        self.services.drivers = self.drivers
        self._lock_fd: int | None = None
        self._began = False
        self._token: str | None = None
        self._token_source = ""
        self._guard: Any = None
        self._ssl: ssl.SSLContext | None = None

    # -- status -----------------------------------------------------------------------------
    def _hub_problems(self) -> list[str]:
        why = self.hub.problem() if self.hub is not None else None
        return [why] if why else []

    def brief_status(self) -> dict[str, Any]:
        """What the editor's events socket shows every second: problems, connections,
        rejected files (not the store's PRAGMA reads or the plugin scan of ``status``)."""
        file_errors = self.watcher.errors() if self.watcher else {}
        connections = self.drivers.status()
        flows = self.engine.status()
        found = problems(self.db.stats(), connections, file_errors, flows)
        return {
            "problems": found + self._hub_problems(),
            "connections": connections,
            "flow_file_errors": file_errors,
        }

    def status(self) -> dict[str, Any]:
        file_errors = self.watcher.errors() if self.watcher else {}
        connections = self.drivers.status()
        store = self.db.stats()
        flows = self.engine.status()
        return {
            "device": self.settings.device.id,
            "version": __version__,
            "uptime_s": round(time.monotonic() - self._started, 3),
            "problems": problems(store, connections, file_errors, flows)
            + self._hub_problems(),
            "flows": flows,
            "flow_file_errors": file_errors,
            "connections": connections,
            "store": {
                **store,
                "context": self.contexts.status(),
                "maintenance": self.maintenance.status(),
            },
            "plugins": self.plugin_reports(),
            "hub": self.hub.status() if self.hub is not None else None,
            "api": self._api_status(),
        }

    def _api_status(self) -> dict[str, Any]:
        """Which auth is in force (never a token): ``mechaway status`` shows it."""
        api = self.settings.api
        if not api.enabled:
            return {"enabled": False}
        out: dict[str, Any] = {"enabled": True, "listen": api.listen, "tls": bool(api.tls_cert)}
        if self._guard is not None:
            out.update(self._guard.status())
        else:
            out.update({"auth": api.auth, "token_source": self._token_source or None})
        return out

    # -- lifecycle --------------------------------------------------------------------------
    def plugin_reports(self, *, scan: bool = False) -> list[dict[str, Any]]:
        """Entry-point plugins and WASM node packs: what loaded, what was skipped and why.

        ``scan`` looks for entry points now (else: what earlier lookups found).
        """
        from mechaway.nodes import plugins

        found = plugins.load_entry_points() if scan else plugins.reports()
        reports = found + (self.packs.reports() if self.packs else [])
        return [
            {"name": r.name, "source": r.source, "types": list(r.types), "error": r.error or None}
            for r in reports
        ]

    async def _watch_packs(self) -> None:
        assert self.packs is not None
        while True:
            await asyncio.sleep(self.settings.flows.poll_interval * 2)
            try:
                await asyncio.to_thread(self.packs.scan)
            except Exception:
                log.exception("scanning %s failed", self.packs.directory)

    def _lock_data_dir(self) -> None:
        """Take the data directory for this daemon alone, before anything is touched.

        A second ``mechaway start`` on the same directory exits here, naming the pid that
        holds it, having opened no database, connected to no broker and started no flow.
        """
        import fcntl

        data_dir = self.settings.data_dir
        try:
            data_dir.mkdir(parents=True, exist_ok=True)
            fd = os.open(data_dir / "daemon.lock", os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as err:
            raise ConfigError(
                f"cannot create the data directory {data_dir}: {err.strerror or err}"
            ) from err
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            holder = os.read(fd, 32).decode("ascii", "replace").strip() or "?"
            os.close(fd)
            raise ConfigError(
                f"data directory {data_dir} is in use by another mechaway daemon (pid"
                f" {holder}): stop it first, or give this one another --data-dir"
            ) from None
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self._lock_fd = fd

    def _check_flows_dir(self) -> None:
        """A flows directory that does not exist is a mistake (a typo in ``--flows``), not
        an empty one: said at start instead of running with no flows and no problem."""
        d = self.flows_dir
        if d is None:
            return
        try:
            is_dir = d.is_dir()
            exists = is_dir or d.exists()
        except OSError as err:
            raise ConfigError(f"flows directory {d}: cannot use: {err.strerror or err}") from err
        if not exists:
            raise ConfigError(
                f"flows directory {d} does not exist: create it (mkdir -p {d}) or fix"
                " flows.dir / --flows"
            )
        if not is_dir:
            raise ConfigError(f"flows directory {d} is not a directory")

    def _close_api_socket(self) -> None:
        if self._api_sock is not None:
            with contextlib.suppress(ValueError, OSError):
                asyncio.get_running_loop().remove_reader(self._api_sock.fileno())
            self._api_sock.close()
            self._api_sock = None

    def _unlock_data_dir(self) -> None:
        if self._lock_fd is not None:
            os.close(self._lock_fd)  # releases the flock
            self._lock_fd = None

    def _api_token(self) -> None:
        """The admin token: configured, or generated once into the data directory."""
        from mechaway.api.auth import ensure_token_file, token_path

        api = self.settings.api
        if not api.enabled:
            return
        if api.auth == "none":
            log.warning(
                "api: AUTH IS OFF (api.auth = \"none\"): any process on this machine can"
                " deploy flows and drive actuators through %s",
                api.listen,
            )
            return
        if api.token is not None:
            self._token, self._token_source = api.token, "api.token"
            return
        try:
            self._token, created = ensure_token_file(self.settings.data_dir)
        except OSError as err:
            raise ConfigError(
                f"api token file {token_path(self.settings.data_dir)}: {err.strerror or err}"
            ) from err
        self._token_source = str(token_path(self.settings.data_dir))
        log.info(
            "api: token %s %s (the mechaway CLI on this machine reads it there)",
            "created in" if created else "read from",
            self._token_source,
        )

    async def start(self) -> None:
        from mechaway.nodes import plugins

        # first what makes a second daemon leave without touching anything: the data
        # directory's lock and the API's port
        self._check_flows_dir()
        if self.settings.api.enabled:  # an unreadable certificate fails here, not later
            self._ssl = self._api_ssl()
        self._lock_data_dir()
        self._api_token()
        if self.settings.api.enabled:
            self._bind_api()
        self._began = True
        self.packs = plugins.PackWatcher(self.settings.data_dir / "plugins")
        await asyncio.to_thread(self.packs.scan)  # it compiles and checks each pack's module
        self._packs_task.start(self._watch_packs)
        self.db.open()
        await self.contexts.start()
        await self.maintenance.start()
        # configured connections, and any a driver preloads (MQTT: publishes spooled before
        # a restart, which drain even if no flow uses their connection any more), start now
        await self.drivers.start_configured()
        await self.manager.start_stored()
        if self.flows_dir is not None:
            self.watcher = FlowDirWatcher(
                self.manager, self.flows_dir, self.settings.flows.poll_interval
            )
            await self.watcher.start()
        if self.settings.hub.url:  # the sync client is imported only when a hub is set
            from mechaway.hub.edge import HubSync

            self.hub = HubSync(
                self.settings.hub,
                device_id=self.settings.device.id,
                data_dir=self.settings.data_dir,
                manager=self.manager,
                db=self.db,
                status=self.status,
            )
            await self.hub.start()
        if self.settings.api.enabled:
            await self._start_api()
        if self.settings.api.insecure_http and self.settings.api.tls_cert is None:
            host, _ = parse_listen(self.settings.api.listen)
            if not is_loopback(host):
                log.warning(
                    "api: plain HTTP on %s (api.insecure_http): tokens cross the network in"
                    " clear",
                    self.settings.api.listen,
                )
        log.info(
            "mechaway %s ready: device %s, %d flow(s), data in %s, api %s",
            __version__,
            self.settings.device.id,
            len(self.engine.flows),
            self.settings.data_dir,
            self.settings.api.listen if self.settings.api.enabled else "off",
        )

    def _bind_api(self) -> None:
        """Bind and listen on the API's address (a taken port fails the start here)."""
        host, port = parse_listen(self.settings.api.listen)
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind((host, port))
            sock.listen(128)
        except OSError as err:
            sock.close()
            raise ConfigError(
                f"api.listen: cannot listen on {host}:{port}: {err.strerror}"
            ) from err
        sock.setblocking(False)
        self._api_sock = sock
        self.listen_port = sock.getsockname()[1]

    async def _start_api(self) -> None:
        """Serve the bound socket: import aiohttp now or (``api.lazy``) at the first request.

        aiohttp builds TLS contexts and loads the CA bundle at import: ~16 MB of RSS that a
        device nobody queries locally never needs. The socket is bound and listening from
        the start, so the first connection waits in the backlog while aiohttp loads.
        """
        sock = self._api_sock
        assert sock is not None
        if not self.settings.api.lazy:
            await self._serve_api(sock)
            return
        loop = asyncio.get_running_loop()

        def first_connection() -> None:
            loop.remove_reader(sock.fileno())
            self._api_task = loop.create_task(self._serve_api(sock), name="mechaway.api.start")

        loop.add_reader(sock.fileno(), first_connection)

    async def _serve_api(self, sock: socket.socket) -> None:
        from aiohttp import web

        from mechaway.api.server import make_app

        api = self.settings.api
        from mechaway.store.series import SeriesStore

        app = make_app(
            self.manager,
            self.status,
            token=self._token,
            max_body=api.max_body_bytes,
            series_store=SeriesStore.of(self.db),
            plugins_fn=lambda: self.plugin_reports(scan=True),
            guard=self.guard(),
            started=self._started,
            brief_status_fn=self.brief_status,
        )
        runner = web.AppRunner(app, access_log=None, handle_signals=False)
        await runner.setup()
        await web.SockSite(runner, sock, ssl_context=self._ssl).start()
        self._runner = runner

    def guard(self) -> Any:
        """The API's access rules (mechaway.api.auth.Guard), built once."""
        if self._guard is None:
            from mechaway.api.auth import Guard

            api = self.settings.api
            host, _ = parse_listen(api.listen)
            names = tuple(api.allowed_hosts)
            if not is_loopback(host):  # reached from the LAN by the machine's own name
                me = socket.gethostname().lower()
                names += (me, f"{me}.local")
            self._guard = Guard(
                token=self._token,
                read_token=api.read_token,
                mode=api.auth,
                listen_host=host,
                allowed_hosts=names,
                allowed_origins=tuple(api.allowed_origins),
                token_source=self._token_source,
            )
        return self._guard

    def _api_ssl(self) -> ssl.SSLContext | None:
        api = self.settings.api
        if api.tls_cert is None or api.tls_key is None:
            return None
        ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        ctx.minimum_version = ssl.TLSVersion.TLSv1_2
        try:
            ctx.load_cert_chain(api.tls_cert, api.tls_key)
        except (OSError, ssl.SSLError) as err:
            raise ConfigError(f"api.tls_cert / api.tls_key: cannot load: {err}") from err
        return ctx

    def request_stop(self) -> None:
        self._stop.set()

    def reload(self) -> None:
        log.info("SIGHUP: rescanning flows")
        if self.watcher is not None:
            self.watcher.nudge()

    async def shutdown(self) -> None:
        """Stop sources first, drain sinks (bounded), close drivers, flush the store."""
        if not self._began:  # refused at the door (lock, port): nothing to stop or say
            self._close_api_socket()
            self._unlock_data_dir()
            return
        sd_notify("STOPPING=1")
        log.info("stopping")
        if self.hub is not None:
            await self.hub.stop()
        if self.watcher is not None:
            await self.watcher.stop()
        await self._packs_task.stop()
        if self._api_task is not None:
            await asyncio.gather(self._api_task, return_exceptions=True)
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
        self._close_api_socket()
        await self.maintenance.stop()
        await self.contexts.stop()  # retiring nodes save their state through the engine hook
        # a stop, not a removal: the sources' unsubscribes stay local, so a persistent MQTT
        # session keeps its subscriptions and queued messages until the next start
        self.drivers.stopping()
        await self.engine.stop()
        await self.drivers.close()
        await self.db.close()
        self._unlock_data_dir()
        log.info("stopped")

    async def serve(self) -> int:
        """Run until SIGTERM/SIGINT; SIGHUP rescans the flows dir."""
        loop = asyncio.get_running_loop()
        loop.add_signal_handler(signal.SIGTERM, self.request_stop)
        loop.add_signal_handler(signal.SIGINT, self.request_stop)
        loop.add_signal_handler(signal.SIGHUP, self.reload)
        try:
            await self.start()
        except BaseException:
            await self.shutdown()
            raise
        sd_notify("READY=1")
        interval = watchdog_interval()
        if interval is not None:
            self._watchdog.start(lambda: run_watchdog(interval, self._trouble, sd_notify))
        await self._stop.wait()
        await self._watchdog.stop()
        await self.shutdown()
        return 0

    def _trouble(self) -> str | None:
        """Why the daemon can no longer do its job, or None (asked before each ping)."""
        if not self.db.writer_alive:
            return f"the store's writer thread for {self.db.path} has stopped"
        return None
