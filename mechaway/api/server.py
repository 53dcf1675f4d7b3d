"""The local admin HTTP API (aiohttp) under ``/api/v1``.

With a token configured, every call but ``GET health`` needs ``Authorization: Bearer``;
without one the daemon only listens on loopback (enforced by the settings).
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Any

import orjson
from aiohttp import web

from mechaway import __version__
from mechaway.api.auth import SAFE_METHODS, Guard
from mechaway.api.editor import setup_editor
from mechaway.api.events import EventHub
from mechaway.api.metrics import setup_metrics
from mechaway.api.validate import check_document, palette_info, parse_errors
from mechaway.api.webhook import setup_webhooks
from mechaway.api.websocket import setup_websockets
from mechaway.errors import FlowError, Issue, StoreUnavailable
from mechaway.flow.parse import parse_text
from mechaway.nodes.registry import node_types, params_schema
from mechaway.runtime.manager import FileOwned, FlowManager, RevisionConflict
from mechaway.store.series import SeriesNotFound, SeriesStore

log = logging.getLogger("mechaway.api")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
StatusFn = Callable[[], dict[str, Any]]

PREFIX = "/api/v1"
MANAGER: web.AppKey[FlowManager] = web.AppKey("manager", FlowManager)
STATUS: web.AppKey[StatusFn] = web.AppKey("status", Callable)  # type: ignore[arg-type]
TOKEN: web.AppKey[str | None] = web.AppKey("token", str)
GUARD: web.AppKey[Guard] = web.AppKey("guard", Guard)
PLUGINS: web.AppKey[Callable[[], list[dict[str, Any]]]] = web.AppKey("plugins", Callable)  # type: ignore[arg-type]
STARTED: web.AppKey[float] = web.AppKey("started", float)
SERIES: web.AppKey[SeriesStore] = web.AppKey("series", SeriesStore)
YAML_GATE: web.AppKey[asyncio.Semaphore] = web.AppKey("yaml_gate", asyncio.Semaphore)
EVENTS: web.AppKey[EventHub] = web.AppKey("events", EventHub)

#: seconds a client has to send a request body, once its headers are in (then 408)
BODY_TIMEOUT = 30.0
#: largest revision number SQLite can hold
MAX_REV = 2**63 - 1
#: most points one series query returns (``?limit=``); page on with ``from=``
MAX_LIMIT = 100_000
#: shortest ``?bucket=`` in seconds (below ~1e-10 s bucket numbers overflow SQLite integers)
MIN_BUCKET = 0.001


def _json(data: Any, status: int = 200) -> web.Response:
    return web.Response(
        body=orjson.dumps(data, default=str), status=status, content_type="application/json"
    )


def _error(status: int, message: str, issues: list[Issue] | None = None) -> web.Response:
    body: dict[str, Any] = {"error": message}
    if issues is not None:
        body["issues"] = [{"where": i.where, "message": i.message} for i in issues]
    return _json(body, status)


@web.middleware
async def _guard(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Host, Origin, token and role checks (auth.py), and turning every failure into a
    JSON error (never a traceback page)."""
    refused = await _refusal(request)
    if refused is not None:
        return refused
    try:
        return await handler(request)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        if isinstance(exc, web.HTTPMethodNotAllowed):
            resp = _error(
                405, f"{request.method} not allowed here (allowed: {exc.headers['Allow']})"
            )
            resp.headers["Allow"] = exc.headers["Allow"]
            return resp
        if isinstance(exc, web.HTTPNotFound):
            return _error(404, f"no route {request.method} {request.path!r:.200}")
        return _error(exc.status, (exc.text if exc.status in (408, 413) else None) or exc.reason)
    except FlowError as err:
        return _error(400, "invalid flow", err.issues)
    except StoreUnavailable as err:  # disk full: nothing was stored; retry once there is room
        return _error(503, str(err))
    except FileOwned as err:  # the file is the flow's one truth
        return _error(409, str(err))
    except Exception:
        log.exception("%s %s failed", request.method, request.path)
        return _error(500, "internal error (details in the daemon log)")


#: body types the JSON endpoints take: a browser can send none of these cross-origin
#: without asking first (text/plain and form types are what a web page posts freely)
BODY_TYPES = frozenset(
    {"application/json", "application/yaml", "application/x-yaml", "text/yaml"}
)


def _needs_token(path: str) -> bool:
    """Every API route but health, and /metrics; the events socket checks its first
    message itself; what else is not under /api/ (the editor's files, webhooks and
    WebSocket endpoints with their own tokens) has rules of its own."""
    if path == "/metrics":
        return True
    return path.startswith(f"{PREFIX}/") and path not in (
        f"{PREFIX}/health",
        f"{PREFIX}/events",
    )


async def _refusal(request: web.Request) -> web.Response | None:
    """Why this request may not proceed, as the response to send; None when it may."""
    guard = request.app[GUARD]
    host = request.headers.get("Host")
    if not guard.host_ok(host):
        guard.refuse("host", "Host %.100r is not this daemon's (api.allowed_hosts)", host)
        return _error(
            421, "Host header names another site (a DNS-rebinding page?): see api.allowed_hosts"
        )
    upgrade = request.headers.get("Upgrade", "").lower() == "websocket"
    changes = request.method not in SAFE_METHODS
    origin = request.headers.get("Origin")
    if (changes or upgrade) and not guard.origin_ok(origin, host, request.scheme):
        guard.refuse("origin", "cross-origin %s %.100s from %.100r", request.method,
                     request.path, origin)  # fmt: skip
        return _error(403, "cross-origin request refused (see api.allowed_origins)")
    if not _needs_token(request.path):
        return None
    role = guard.bearer_role(request.headers.get("Authorization"))
    peer = request.remote or "?"
    if role is None:
        guard.throttle.failed(peer)
        delay = guard.throttle.delay(peer)
        guard.refuse("token", "missing or wrong token from %s", peer)
        if delay:
            await asyncio.sleep(delay)
        return _error(401, "missing or wrong bearer token")
    guard.throttle.succeeded(peer)
    if changes and role != "admin":
        guard.refuse("role", "read-only token used for %s %.100s", request.method, request.path)
        return _error(403, "this token is read-only: it cannot deploy, delete or write")
    if request.method in ("POST", "PUT", "PATCH"):
        has_body = (request.content_length or 0) > 0 or "Transfer-Encoding" in request.headers
        ctype = request.content_type if "Content-Type" in request.headers else ""
        if has_body and ctype not in BODY_TYPES and not ctype.endswith("+json"):
            return _error(
                415,
                f"Content-Type {ctype[:60]!r} is not accepted here: send application/json"
                " (or application/yaml)",
            )
    return None


def _too_large(request: web.Request) -> web.HTTPRequestEntityTooLarge:
    cap = request.client_max_size
    return web.HTTPRequestEntityTooLarge(
        cap, text=f"request body larger than {cap} bytes (the api.max_body_bytes setting)"
    )


async def _body(request: web.Request) -> Any:
    """Decode a JSON (or YAML, by content type) body; a 400 FlowError when it is not.

    A body over the size cap is a 413 (at once if its Content-Length says so), one not
    sent within ``BODY_TIMEOUT`` a 408. YAML is parsed on a worker thread, one body at a
    time: PyYAML takes seconds and some 300 MB for a 1 MiB document, which on the event
    loop would stall every flow, and several at once could exhaust a small device's RAM.
    """
    if (request.content_length or 0) > request.client_max_size:
        raise _too_large(request)
    try:
        async with asyncio.timeout(BODY_TIMEOUT):
            data = await request.read()
    except web.HTTPRequestEntityTooLarge:
        raise _too_large(request) from None
    except TimeoutError:
        raise web.HTTPRequestTimeout(
            text=f"request body not received within {BODY_TIMEOUT:g} s"
        ) from None
    if "yaml" in (request.content_type or ""):
        async with request.app[YAML_GATE]:
            return await asyncio.to_thread(parse_text, data, fmt="yaml", source="request body")
    return parse_text(data, fmt="json", source="request body")


async def health(request: web.Request) -> web.Response:
    return _json(
        {
            "status": "ok",
            "version": __version__,
            "uptime_s": round(time.monotonic() - request.app[STARTED], 3),
        }
    )


async def list_flows(request: web.Request) -> web.Response:
    mgr = request.app[MANAGER]
    running = mgr.engine.flows
    out = []
    for rev in mgr.store.active():
        rf = running.get(rev.flow_id)
        out.append(
            {
                "id": rev.flow_id,
                "name": rev.doc.get("name", ""),
                "rev": rev.rev,
                "source": rev.source,
                "running": rf is not None,
                "disabled": bool(rev.doc.get("disabled", False)),
            }
        )
    return _json(out)


def _flow_id(request: web.Request) -> str:
    return request.match_info["flow_id"]


async def get_flow(request: web.Request) -> web.Response:
    mgr = request.app[MANAGER]
    fid = _flow_id(request)
    rev = mgr.store.active_rev(fid)
    revision = mgr.store.get(fid, rev) if rev is not None else None
    if revision is None:
        return _error(404, f"no flow {fid!r}")
    out: dict[str, Any] = {"rev": revision.rev, "source": revision.source, "flow": revision.doc}
    path = mgr.files.get(fid)
    if path is not None and revision.source == "file":
        out["file"] = path
    resp = _json(out)
    resp.headers["ETag"] = f'"{revision.rev}"'
    return resp


def _if_match(request: web.Request) -> int | None:
    """``If-Match: "<rev>"`` (or ``W/"<rev>"``): the revision a deploy was based on."""
    raw = request.headers.get("If-Match")
    if raw is None:
        return None
    text = raw.strip().removeprefix("W/").strip('"')
    if not text.isascii() or not text.isdigit() or not 1 <= int(text) <= MAX_REV:
        raise FlowError(
            [Issue("If-Match", f'expected a revision as "<rev>" (what ETag said), got {raw!r:.40}')]
        )
    return int(text)


async def put_flow(request: web.Request) -> web.Response:
    fid = _flow_id(request)
    raw = await _body(request)
    if isinstance(raw, dict):
        raw.setdefault("id", fid)
        if raw["id"] != fid:
            raise FlowError([Issue("id", f"{raw['id']!r} does not match the URL's {fid!r}")])
    try:
        result = await request.app[MANAGER].deploy(
            raw, "api", origin=f"PUT {request.path}", if_rev=_if_match(request)
        )
    except RevisionConflict as err:
        return _json({"error": str(err), "current_rev": err.current}, 409)
    resp = _json(result.as_dict(), 201 if result.new_revision else 200)
    resp.headers["ETag"] = f'"{result.rev}"'
    return resp


async def delete_flow(request: web.Request) -> web.Response:
    fid = _flow_id(request)
    if not await request.app[MANAGER].delete(fid):
        return _error(404, f"no flow {fid!r}")
    return _json({"id": fid, "deleted": True})


async def revisions(request: web.Request) -> web.Response:
    fid = _flow_id(request)
    mgr = request.app[MANAGER]
    history = mgr.store.history(fid)
    if not history:
        return _error(404, f"no flow {fid!r}")
    active = mgr.store.active_rev(fid)
    return _json([{**r.summary(), "active": r.rev == active} for r in history])


async def rollback(request: web.Request) -> web.Response:
    try:
        body = await _body(request)
    except FlowError as err:
        return _error(400, "invalid request body", err.issues)
    rev = body.get("rev") if isinstance(body, dict) else None
    if not isinstance(rev, int) or isinstance(rev, bool):
        return _error(
            400, "invalid request body", [Issue("rev", "expected an integer revision number")]
        )
    if not 1 <= rev <= MAX_REV:
        return _error(
            400,
            "invalid request body",
            [Issue("rev", f"revision numbers run from 1 to {MAX_REV}, got {rev}")],
        )
    try:
        result = await request.app[MANAGER].rollback(_flow_id(request), rev)
    except KeyError as err:
        return _error(404, str(err.args[0]))
    return _json(result.as_dict())


async def status(request: web.Request) -> web.Response:
    return _json(request.app[STATUS]())


async def plugins(request: web.Request) -> web.Response:
    return _json(request.app[PLUGINS]())


#: the whole schema document, encoded, for the registry it was built from: the editor
#: loads it first, and building it takes 50-80 ms (far more on a busy Pi)
_SCHEMA_CACHE: dict[tuple[tuple[str, type], ...], bytes] = {}


async def schema(request: web.Request) -> web.Response:
    name = request.match_info.get("type")
    types = node_types()
    if name:
        if name not in types:
            return _error(404, f"unknown node type {name!r}")
        return _json({**params_schema(name), "x-mechaway": palette_info(types[name])})
    key = tuple(types.items())  # a plugin or pack (un)loaded: another registry, rebuilt
    body = _SCHEMA_CACHE.get(key)
    if body is None:
        _SCHEMA_CACHE.clear()
        body = _SCHEMA_CACHE[key] = orjson.dumps(
            {n: {**params_schema(n), "x-mechaway": palette_info(c)} for n, c in types.items()},
            default=str,
        )
    return web.Response(body=body, content_type="application/json")


async def validate_flow(request: web.Request) -> web.Response:
    """``POST /validate``: the deploy's validation, nothing deployed; errors located."""
    try:
        raw = await _body(request)
    except FlowError as err:
        status, out = parse_errors(err)
    else:
        status, out = check_document(raw)
    return _json(out, status)


async def import_nodered(request: web.Request) -> web.Response:
    """``POST /import/nodered``: a Node-RED flows.json as flow documents + a report."""
    from mechaway.flow.nodered import convert

    raw = await _body(request)
    return _json(convert(raw).as_dict())


def _when(query: Any, key: str) -> float | None:
    """``?from=``/``?to=``: epoch seconds or ISO 8601 (naive means UTC)."""
    raw = query.get(key)
    if raw is None or raw == "":
        return None
    try:
        value = float(raw)
    except ValueError:
        try:
            dt = datetime.fromisoformat(raw)
            value = (dt if dt.tzinfo else dt.replace(tzinfo=UTC)).timestamp()
        except (ValueError, OverflowError):
            value = math.nan
    if not math.isfinite(value):  # nan, inf, 1e999 or not a time at all
        raise ValueError(f"{key}: expected epoch seconds or ISO 8601, got {raw!r:.40}")
    return value


def _number(q: Any, key: str, kind: type[int] | type[float]) -> Any:
    try:
        return kind(q[key])
    except ValueError:
        raise ValueError(f"{key}: expected a number, got {q[key]!r:.40}") from None


async def series(request: web.Request) -> web.Response:
    """Local history of a series: ``?from=&to=&agg=mean|min|max|count&bucket=SECONDS&limit=``."""
    name = request.match_info["name"]
    q = request.query
    try:
        bucket = _number(q, "bucket", float) if q.get("bucket") else None
        if bucket is not None and bucket < MIN_BUCKET:  # nan and inf are the store's to refuse
            raise ValueError(f"bucket must be at least {MIN_BUCKET:g} seconds")
        limit = _number(q, "limit", int) if q.get("limit") else 10_000
        if limit > MAX_LIMIT:
            raise ValueError(f"limit must be <= {MAX_LIMIT} (page on with from=)")
        start, end = _when(q, "from"), _when(q, "to")
        if start is not None and end is not None and start > end:
            raise ValueError("from is after to")
        result = await request.app[SERIES].query(
            name,
            start=start,
            end=end,
            agg=q.get("agg") or None,
            bucket=bucket,
            limit=limit,
        )
    except SeriesNotFound:
        return _error(404, f"no series {name!r}")
    except ValueError as err:
        return _error(400, str(err))
    return _json(result)


def make_app(
    manager: FlowManager,
    status_fn: StatusFn,
    *,
    token: str | None,
    max_body: int,
    series_store: SeriesStore | None = None,
    plugins_fn: Callable[[], list[dict[str, Any]]] = list,
    guard: Guard | None = None,
    started: float | None = None,
    brief_status_fn: StatusFn | None = None,
) -> web.Application:
    """The admin API application. The daemon passes its ``guard``; without one (tests of
    a bare app), ``token`` alone is checked, and no token means no auth."""
    app = web.Application(middlewares=[_guard], client_max_size=max_body)
    app[MANAGER] = manager
    app[STATUS] = status_fn
    app[PLUGINS] = plugins_fn
    app[TOKEN] = token
    app[GUARD] = guard or Guard(token=token, mode="token" if token else "none")
    # the daemon's start, not the app's: a lazy API is made at the first request
    app[STARTED] = time.monotonic() if started is None else started
    app[YAML_GATE] = asyncio.Semaphore(1)
    r = app.router
    r.add_get(f"{PREFIX}/health", health)
    r.add_get(f"{PREFIX}/flows", list_flows)
    r.add_get(f"{PREFIX}/flows/{{flow_id}}", get_flow)
    r.add_put(f"{PREFIX}/flows/{{flow_id}}", put_flow)
    r.add_delete(f"{PREFIX}/flows/{{flow_id}}", delete_flow)
    r.add_get(f"{PREFIX}/flows/{{flow_id}}/revisions", revisions)
    r.add_post(f"{PREFIX}/flows/{{flow_id}}/rollback", rollback)
    r.add_get(f"{PREFIX}/status", status)
    r.add_get(f"{PREFIX}/plugins", plugins)
    r.add_get(f"{PREFIX}/schema", schema)
    r.add_get(f"{PREFIX}/schema/{{type}}", schema)
    r.add_post(f"{PREFIX}/validate", validate_flow)
    r.add_post(f"{PREFIX}/import/nodered", import_nodered)
    guard_ = app[GUARD]
    hub = app[EVENTS] = EventHub(
        manager.engine,
        brief_status_fn or status_fn,  # every second while an editor is open: the cheap one
        token,
        authorize=lambda t: guard_.role_of(t) is not None,
    )
    r.add_get(f"{PREFIX}/events", hub.handle)
    manager.on_change.append(hub.on_change)

    async def _close_events(app: web.Application) -> None:
        if hub.on_change in manager.on_change:
            manager.on_change.remove(hub.on_change)
        await hub.close()

    app.on_shutdown.append(_close_events)
    if series_store is not None:
        app[SERIES] = series_store
        r.add_get(f"{PREFIX}/series/{{name:.+}}", series)
    setup_webhooks(app, manager.engine, guard_)
    setup_websockets(app, guard_)
    setup_metrics(app, manager, status_fn, guard_)
    setup_editor(app)
    return app
