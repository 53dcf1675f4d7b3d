"""The hub's HTTP API (``/api/v1``), served by ``mechaway hub start``.

Admin calls carry the admin token; a device token acts only as its own device (its
heartbeat, bundle, telemetry, its own record). Every handler runs under a timeout, bodies
are bounded, bad requests are answered 4xx and logged once per burst, and nothing a peer
sends can end the process.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import logging
import os
import re
import secrets
import signal
import ssl
import sys
import time
from collections.abc import Awaitable, Callable
from typing import Any

import orjson
from aiohttp import web

from mechaway.errors import ConfigError, FlowError, MechawayError
from mechaway.hub.config import HubFile, HubServerSettings
from mechaway.hub.db import Conflict, HubDb, HubDbError, open_backend, token_hash
from mechaway.hub.keys import Signer, load_signer
from mechaway.hub.wire import BATCH_CONTENT_TYPE, WireError, decode_batch, decode_heartbeat
from mechaway.settings import parse_listen
from mechaway.tasks import OwnedTask

log = logging.getLogger("mechaway.hub")

#: device ids follow the edge's rule (no MQTT wildcards, separators, blanks)
DEVICE_ID_RE = re.compile(r"[^/+#\s\x00-\x1f\x7f]{1,253}")
TAG_RE = re.compile(r"[A-Za-z0-9._-]{1,64}")
MAX_TELEMETRY_LIMIT = 10_000


class ApiError(MechawayError):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


class BurstLog:
    """One log line per kind of trouble per window; the next line says how many were quiet."""

    def __init__(self, window_s: float = 10.0) -> None:
        self.window_s = window_s
        self._until: dict[str, float] = {}
        self._quiet: dict[str, int] = {}
        self.counts: dict[str, int] = {}

    def __call__(self, kind: str, level: int, text: str) -> None:
        self.counts[kind] = self.counts.get(kind, 0) + 1
        now = time.monotonic()
        if now < self._until.get(kind, 0.0):
            self._quiet[kind] = self._quiet.get(kind, 0) + 1
            return
        quiet = self._quiet.pop(kind, 0)
        self._until[kind] = now + self.window_s
        log.log(level, "%s%s", text, f" ({quiet} similar not logged)" if quiet else "")


class VersionWatch:
    """Wakes long-polls when the flows version in the database changes (any hub process
    may have changed it: the database is polled, every ``interval`` s while some wait)."""

    def __init__(self, db: HubDb, interval: float = 0.5) -> None:
        self.db = db
        self.interval = interval
        self._changed = asyncio.Event()
        self._waiters = 0
        self._task = OwnedTask("mechaway.hub.version-watch")
        self._version: int | None = None

    def start(self) -> None:
        self._task.start(self._run)

    async def stop(self) -> None:
        await self._task.stop()

    async def wait(self, timeout: float) -> None:
        self._waiters += 1
        try:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._changed.wait(), timeout)
        finally:
            self._waiters -= 1

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self.interval)
            if not self._waiters:
                self._version = None
                continue
            try:
                v = await self.db.flows_version()
            except Exception as err:
                log.debug("version watch: %s", err)
                continue
            if self._version is not None and v != self._version:
                self._changed.set()
                self._changed = asyncio.Event()
            self._version = v

    def nudge(self) -> None:
        """A change made by this process: wake its waiters at once."""
        self._changed.set()
        self._changed = asyncio.Event()


class Hub:
    def __init__(self, settings: HubServerSettings, db: HubDb, signer: Signer) -> None:
        self.s = settings
        self.db = db
        self.signer = signer
        assert settings.admin_token
        self._admin = token_hash(settings.admin_token).encode()
        self._prov = (
            token_hash(settings.provisioning_token).encode()
            if settings.provisioning_token
            else None
        )
        self.watch = VersionWatch(db)
        self.burst = BurstLog()
        self.heartbeats = 0

    # -- auth ----------------------------------------------------------------------------
    @staticmethod
    def _bearer(request: web.Request) -> str | None:
        h = request.headers.get("Authorization", "")
        if h[:7].lower() != "bearer " or len(h) > 1024:
            return None
        return h[7:].strip() or None

    def _is_admin(self, token: str | None) -> bool:
        return token is not None and hmac.compare_digest(token_hash(token).encode(), self._admin)

    def admin(self, request: web.Request) -> None:
        if not self._is_admin(self._bearer(request)):
            raise ApiError(401, "admin token required")

    async def device_or_admin(self, request: web.Request, *, admin_ok: bool) -> str:
        """The device id of the path, once the caller proved to be it (or the admin)."""
        dev = device_id(request)
        token = self._bearer(request)
        if token is None:
            raise ApiError(401, "token required")
        if admin_ok and self._is_admin(token):
            return dev
        self._check_device(dev, token, await self.db.device_token_hash(dev))
        return dev

    @staticmethod
    def _check_device(dev: str, token: str | None, stored: str | None) -> None:
        if token is None:
            raise ApiError(401, "token required")
        # compared even when the device is unknown, so timing tells nothing
        ok = hmac.compare_digest(token_hash(token).encode(), (stored or "x" * 64).encode())
        if stored is None or not ok:
            raise ApiError(403, f"this token does not act for device {dev!r}")

    # -- handlers ------------------------------------------------------------------------
    async def health(self, request: web.Request) -> web.Response:
        return _json({"ok": True})

    async def public_key(self, request: web.Request) -> web.Response:
        return _json({"public_key": self.signer.public_key})

    async def list_devices(self, request: web.Request) -> web.Response:
        self.admin(request)
        return _json(await self.db.devices())

    async def add_device(self, request: web.Request) -> web.Response:
        self.admin(request)
        body = await _body_json(request)
        if not isinstance(body, dict):
            raise ApiError(400, "expected {\"id\": ..., \"tags\": [...]}")
        dev, tags = body.get("id"), body.get("tags", [])
        return _json(await self._register(dev, tags), status=201)

    async def _register(self, dev: Any, tags: Any) -> dict[str, Any]:
        if not isinstance(dev, str) or not DEVICE_ID_RE.fullmatch(dev):
            raise ApiError(400, "id: not a usable device id (no / + # blanks, <= 253 chars)")
        if not isinstance(tags, list) or not all(
            isinstance(t, str) and TAG_RE.fullmatch(t) for t in tags
        ):
            raise ApiError(400, "tags: expected a list of names of [A-Za-z0-9._-]{1,64}")
        token = secrets.token_urlsafe(32)
        await self.db.add_device(dev, tags, token_hash(token))
        log.info("device %s registered (tags %s)", dev, ",".join(tags) or "none")
        return {"id": dev, "tags": sorted(set(tags)), "token": token}

    async def provision(self, request: web.Request) -> web.Response:
        token = self._bearer(request)
        if self._prov is None or token is None or not hmac.compare_digest(
            token_hash(token).encode(), self._prov
        ):
            raise ApiError(401, "provisioning token required")
        body = await _body_json(request)
        dev = body.get("id") if isinstance(body, dict) else None
        return _json(await self._register(dev, list(self.s.provision_tags)), status=201)

    async def get_device(self, request: web.Request) -> web.Response:
        dev = await self.device_or_admin(request, admin_ok=True)
        view = await self.db.device(dev)
        if view is None:
            raise ApiError(404, f"no device {dev!r}")
        return _json(view)

    async def put_flow(self, request: web.Request) -> web.Response:
        self.admin(request)
        scope = "tag" if "tag" in request.match_info else "device"
        key = request.match_info["tag"] if scope == "tag" else device_id(request)
        if scope == "tag" and not TAG_RE.fullmatch(key):
            raise ApiError(400, "tag: expected [A-Za-z0-9._-]{1,64}")
        fid = request.match_info["flow_id"]
        doc = await _body_json(request)
        _check_flow(doc, fid)
        version = await self.db.put_flow(scope, key, fid, doc)
        self.watch.nudge()
        log.info("flow %s deployed to %s %s (flows version %d)", fid, scope, key, version)
        return _json({"flow": fid, scope: key, "version": version})

    async def delete_flow(self, request: web.Request) -> web.Response:
        self.admin(request)
        scope = "tag" if "tag" in request.match_info else "device"
        key = request.match_info["tag"] if scope == "tag" else device_id(request)
        fid = request.match_info["flow_id"]
        if not await self.db.delete_flow(scope, key, fid):
            raise ApiError(404, f"no flow {fid!r} for {scope} {key!r}")
        self.watch.nudge()
        return _json({"flow": fid, scope: key, "deleted": True})

    async def heartbeat(self, request: web.Request) -> web.Response:
        """Two round trips: the device's token and bundle state in one read, the update."""
        dev = device_id(request)
        token = self._bearer(request)
        raw = await request.read()
        try:
            hb = decode_heartbeat(raw)
        except WireError as err:
            raise ApiError(400, str(err)) from None
        found = await self.db.device_state(dev, hb.bundle_seq)
        self._check_device(dev, token, found[0] if found else None)
        assert found is not None
        await self.db.heartbeat(dev, hb, raw)
        self.heartbeats += 1
        bundle = await self.db.bundle_for(dev, hb.bundle_seq, found[1])
        return _raw_json(b'{"bundle":%s}' % (bundle.encode() if bundle else b"null"))

    async def bundle(self, request: web.Request) -> web.Response:
        dev = await self.device_or_admin(request, admin_ok=False)
        after = _int_query(request, "after", 0, 0, 2**62)
        wait = min(float(_int_query(request, "wait", 0, 0, 3600)), self.s.long_poll)
        deadline = time.monotonic() + wait
        while True:
            bundle = await self.db.bundle_for(dev, after)
            if bundle is not None:
                return _raw_json(b'{"bundle":%s}' % bundle.encode())
            left = deadline - time.monotonic()
            if left <= 0:
                return web.Response(status=204)
            await self.watch.wait(left)

    async def post_telemetry(self, request: web.Request) -> web.Response:
        dev = await self.device_or_admin(request, admin_ok=False)
        if request.content_type != BATCH_CONTENT_TYPE:
            raise ApiError(415, f"expected Content-Type {BATCH_CONTENT_TYPE}")
        body = await request.read()
        try:
            batch = decode_batch(body)
        except WireError as err:
            raise ApiError(400, str(err)) from None
        return _json(await self.db.ingest(dev, batch))

    async def get_telemetry(self, request: web.Request) -> web.Response:
        dev = await self.device_or_admin(request, admin_ok=True)
        after = _int_query(request, "after", 0, 0, 2**62)
        limit = _int_query(request, "limit", 1000, 1, MAX_TELEMETRY_LIMIT)
        return _raw_json(await self.db.telemetry(dev, after, limit))

    # -- the app -------------------------------------------------------------------------
    @web.middleware
    async def guard(
        self, request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
    ) -> web.StreamResponse:
        """Timeouts, JSON errors, one log line per burst; nothing escapes."""
        polls = request.path.endswith("/bundle")
        limit = self.s.request_timeout + (self.s.long_poll if polls else 0)
        where = f"{request.method} {request.path[:120]}"
        try:
            async with asyncio.timeout(limit):
                return await handler(request)
        except ApiError as err:
            return self._refuse(err.status, str(err), where)
        except Conflict as err:
            return self._refuse(err.status, str(err), where)
        except web.HTTPException as err:
            if err.status >= 400:
                return self._refuse(err.status, err.reason, where)
            raise
        except TimeoutError:
            self.burst("timeout", logging.WARNING, f"{where}: no answer within {limit:.0f} s")
            return _json({"error": "timed out"}, status=503)
        except (HubDbError, OSError) as err:
            self.burst("db", logging.ERROR, f"{where}: database unavailable: {err}")
            return _json({"error": "database unavailable"}, status=503)
        except Exception as err:
            if _is_db_error(err):
                self.burst("db", logging.ERROR, f"{where}: database error: {err}")
                return _json({"error": "database unavailable"}, status=503)
            self.burst("bug", logging.ERROR, f"{where}: {type(err).__name__}: {err}")
            log.debug("traceback", exc_info=True)
            return _json({"error": "internal error"}, status=500)

    def _refuse(self, status: int, message: str, where: str) -> web.Response:
        self.burst(f"4xx:{status}", logging.WARNING, f"{where}: {status} {message[:200]}")
        return _json({"error": message}, status=status)

    def app(self) -> web.Application:
        app = web.Application(middlewares=[self.guard], client_max_size=self.s.max_body_bytes)
        r = app.router
        r.add_get("/health", self.health)
        v = "/api/v1"
        r.add_get(f"{v}/public-key", self.public_key)
        r.add_get(f"{v}/devices", self.list_devices)
        r.add_post(f"{v}/devices", self.add_device)
        r.add_post(f"{v}/provision", self.provision)
        r.add_get(v + "/devices/{id}", self.get_device)
        r.add_put(v + "/devices/{id}/flows/{flow_id}", self.put_flow)
        r.add_delete(v + "/devices/{id}/flows/{flow_id}", self.delete_flow)
        r.add_put(v + "/tags/{tag}/flows/{flow_id}", self.put_flow)
        r.add_delete(v + "/tags/{tag}/flows/{flow_id}", self.delete_flow)
        r.add_post(v + "/devices/{id}/heartbeat", self.heartbeat)
        r.add_get(v + "/devices/{id}/bundle", self.bundle)
        r.add_post(v + "/devices/{id}/telemetry", self.post_telemetry)
        r.add_get(v + "/devices/{id}/telemetry", self.get_telemetry)
        return app


def _is_db_error(err: BaseException) -> bool:
    mod = type(err).__module__
    return mod.startswith(("asyncpg", "sqlite3"))


def device_id(request: web.Request) -> str:
    dev = request.match_info["id"]
    if not DEVICE_ID_RE.fullmatch(dev):
        raise ApiError(400, "not a usable device id")
    return dev


def _int_query(request: web.Request, name: str, default: int, lo: int, hi: int) -> int:
    raw = request.query.get(name)
    if raw is None:
        return default
    if not raw.isascii() or not raw.isdigit() or len(raw) > 19 or not lo <= int(raw) <= hi:
        raise ApiError(400, f"?{name}= expects an integer {lo}..{hi}")
    return int(raw)


async def _body_json(request: web.Request) -> Any:
    raw = await request.read()
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError as err:
        raise ApiError(400, f"body is not JSON: {err}") from None


def _check_flow(doc: Any, flow_id: str) -> None:
    """The flow document's structure (node types are the edge's business: a plugin type
    installed on devices need not be installed on the hub)."""
    from mechaway.flow.validate import parse_doc

    if not isinstance(doc, dict):
        raise ApiError(400, "a flow document is a JSON object")
    if doc.get("id") != flow_id:
        raise ApiError(400, f"the document's id {doc.get('id')!r} is not {flow_id!r} (the URL's)")
    try:
        parse_doc(doc)
    except FlowError as err:
        raise ApiError(400, err.render()) from None


def _json(data: Any, status: int = 200) -> web.Response:
    return _raw_json(orjson.dumps(data), status)


def _raw_json(body: bytes, status: int = 200) -> web.Response:
    return web.Response(body=body, status=status, content_type="application/json")


def tls_context(s: HubServerSettings) -> ssl.SSLContext | None:
    if not s.tls_cert:
        return None
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    try:
        ctx.load_cert_chain(s.tls_cert, s.tls_key)
    except (OSError, ssl.SSLError) as err:
        raise ConfigError(f"hub.tls_cert / hub.tls_key: cannot load: {err}") from err
    return ctx


class _QuietServerErrors(logging.Filter):
    """aiohttp's "Error handling request" (HTTP that could not be parsed) as one warning
    line per burst, not an ERROR with a traceback per request."""

    def __init__(self) -> None:
        super().__init__()
        self.burst = BurstLog()

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        text = record.getMessage() + (f": {' '.join(str(exc).split())[:200]}" if exc else "")
        self.burst("unparsable", logging.WARNING, f"aiohttp: {text}")
        return False


def setup_logging(level: str) -> None:
    fmt = "%(levelname)s %(name)s: %(message)s"
    if "JOURNAL_STREAM" not in os.environ:
        fmt = "%(asctime)s " + fmt
    logging.basicConfig(level=level.upper(), format=fmt, stream=sys.stderr, force=True)
    server_log = logging.getLogger("aiohttp.server")
    if not any(isinstance(f, _QuietServerErrors) for f in server_log.filters):
        server_log.addFilter(_QuietServerErrors())


def run_hub(cfg: HubFile) -> int:
    """``mechaway hub start``: logging, uvloop where installed, ``serve`` until a signal."""
    setup_logging(cfg.log.level)

    async def main() -> int:
        return await serve(cfg)

    try:
        import uvloop
    except ImportError:
        return asyncio.run(main())
    return uvloop.run(main())


async def serve(cfg: HubFile, *, ready: Callable[[int], None] | None = None) -> int:
    """Run the hub until SIGTERM/SIGINT."""
    s = cfg.hub
    from pathlib import Path

    signer = load_signer(Path(s.signing_key))
    db = HubDb(open_backend(s.database, s.pool_size), signer.sign)
    await db.open()
    hub = Hub(s, db, signer)
    host, port = parse_listen(s.listen, "hub.listen")
    runner = web.AppRunner(hub.app(), access_log=None, handle_signals=False)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    try:
        await runner.setup()
        site = web.TCPSite(runner, host, port, ssl_context=tls_context(s), backlog=1024)
        try:
            await site.start()
        except OSError as err:
            why = err.strerror or err
            raise ConfigError(f"hub.listen: cannot listen on {host}:{port}: {why}") from err
        hub.watch.start()
        bound = port
        server = getattr(site, "_server", None)
        if server is not None and server.sockets:
            bound = server.sockets[0].getsockname()[1]
        log.info(
            "mechaway hub listening on %s://%s:%d, database %s, public key %s",
            "https" if s.tls_cert else "http",
            host,
            bound,
            "postgresql" if db.b.dialect == "pg" else s.database,
            signer.public_key,
        )
        if ready is not None:
            ready(bound)
        await stop.wait()
    finally:
        log.info("hub stopping")
        await hub.watch.stop()
        await runner.cleanup()
        await db.close()
    return 0
