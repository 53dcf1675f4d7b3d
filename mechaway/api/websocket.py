"""``/ws/{flow_id}/{path}``: the server side of the WebSocket nodes' endpoints.

Before the upgrade: the endpoint exists (404), the client count is under ``max_clients``
(503), and a token presented in a header (``Authorization: Bearer`` or
``X-Mechaway-Token``) is right (401). A browser cannot set those headers on a WebSocket:
without one, a protected endpoint takes ``{"type": "auth", "token": ...}`` as the first
message (within ``AUTH_TIMEOUT_S``, else close 4401), as the events socket does. The
API's admin token does not open an endpoint. The middleware has already refused an
upgrade from another origin.

Then each client runs a reader (messages to the endpoint's In nodes; the reader waits
while the flow is full) and a writer (its bounded queue to the socket). A client dropped
for reading too slowly is closed with 4408; one whose endpoint went away (its flow was
removed) with 1001. A message over the endpoint's ``max_message_bytes`` closes the
socket with 1009 (aiohttp's own check).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any

import orjson
from aiohttp import WSCloseCode, WSMsgType, web

from mechaway.api.auth import Guard
from mechaway.api.webhook import presented_token, refuse_token
from mechaway.nodes.websocket import CLOSE_TOO_SLOW, Client, Endpoint, endpoint

log = logging.getLogger("mechaway.api.websocket")

WS_GUARD: web.AppKey[Guard] = web.AppKey("ws_guard", Guard)


class Sockets:
    """The open connections of one app, to close at shutdown."""

    def __init__(self) -> None:
        self.open: set[web.WebSocketResponse] = set()


SOCKETS: web.AppKey[Sockets] = web.AppKey("ws_sockets", Sockets)

#: a client of a protected endpoint without a token header must authenticate this fast
AUTH_TIMEOUT_S = 5.0
CLOSE_AUTH = 4401
#: seconds between pings (a client that does not answer is dropped)
HEARTBEAT_S = 30.0


def _error(status: int, message: str) -> web.Response:
    return web.Response(
        body=orjson.dumps({"error": message}), status=status, content_type="application/json"
    )


async def _first_message_auth(ws: web.WebSocketResponse, ep: Endpoint) -> bool:
    why = 'expected {"type": "auth", "token": ...} first'
    try:
        msg = await asyncio.wait_for(ws.receive(), AUTH_TIMEOUT_S)
    except TimeoutError:
        msg = None
        why = f"no auth message within {AUTH_TIMEOUT_S:g} s"
    if msg is not None and msg.type == WSMsgType.TEXT:
        try:
            data = orjson.loads(msg.data)
        except orjson.JSONDecodeError:
            data = None
        if isinstance(data, dict) and data.get("type") == "auth":
            token = data.get("token")
            if isinstance(token, str) and ep.authorize(token.encode("utf-8", "surrogateescape")):
                return True
            why = "wrong token"
    ep.refused += 1
    if not ws.closed:
        await ws.close(code=CLOSE_AUTH, message=why.encode()[:120])
    return False


async def _read(ws: web.WebSocketResponse, ep: Endpoint, client: Client) -> None:
    async for msg in ws:
        if msg.type in (WSMsgType.TEXT, WSMsgType.BINARY):
            waiting = ep.receive(client, msg.data)
            if waiting is not None:
                await waiting


async def handle(request: web.Request) -> web.StreamResponse:
    """``GET /ws/{flow_id}/{path}`` (a WebSocket upgrade)."""
    fid = request.match_info["flow_id"]
    path = request.match_info["path"]
    ep = endpoint(fid, path)
    if ep is None:
        return _error(404, f"no WebSocket endpoint /{path[:100]} in a running flow {fid[:100]!r}")
    authed = not ep.protected
    presented = presented_token(request)
    if ep.protected and presented is not None:
        if not ep.authorize(presented):
            ep.refused += 1
            return await refuse_token(request, request.app[WS_GUARD], f"WebSocket {ep.url_path}")
        authed = True
    if len(ep.clients) >= ep.max_clients:
        ep.refused += 1
        return _error(503, f"{ep.url_path}: {ep.max_clients} clients connected already")
    ws = web.WebSocketResponse(heartbeat=HEARTBEAT_S, max_msg_size=ep.max_message_bytes)
    try:
        await ws.prepare(request)
    except web.HTTPException as exc:  # not an upgrade request
        return _error(exc.status if exc.status >= 400 else 400, "expected a WebSocket upgrade")
    if not authed and not await _first_message_auth(ws, ep):
        return ws
    client = ep.join(ws)
    if client is None:
        await ws.close(code=WSCloseCode.TRY_AGAIN_LATER, message=b"too many clients")
        return ws
    sockets = request.app[SOCKETS].open
    sockets.add(ws)
    writer = asyncio.ensure_future(client.run_writer())
    reader = asyncio.ensure_future(_read(ws, ep, client))
    try:
        await asyncio.wait({writer, reader}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        ep.leave(client)
        sockets.discard(ws)
        for t in (writer, reader):
            t.cancel()
        await asyncio.gather(writer, reader, return_exceptions=True)
        if not ws.closed:
            if client.kick.startswith("too slow"):
                log.warning("%s: client %s dropped: %s", ep.url_path, client.id, client.kick)
                code = CLOSE_TOO_SLOW
            else:
                code = WSCloseCode.GOING_AWAY
            await _close(ws, request, code, client.kick or "closing")
    return ws


async def _close(ws: web.WebSocketResponse, request: web.Request, code: int, why: str) -> None:
    try:
        await asyncio.wait_for(ws.close(code=code, message=why.encode()[:120]), 2.0)
    except (TimeoutError, ConnectionError, RuntimeError):
        transport = request.transport
        if transport is not None:
            transport.abort()


def setup_websockets(app: web.Application, guard: Guard) -> None:
    """Serve ``/ws/{flow_id}/{path}``; close every socket at shutdown."""
    app[WS_GUARD] = guard
    app[SOCKETS] = Sockets()
    app.router.add_get("/ws/{flow_id}/{path:.+}", handle)

    async def _shutdown(app: web.Application) -> None:
        for ws in list(app[SOCKETS].open):
            with contextlib.suppress(Exception):
                await asyncio.wait_for(
                    ws.close(code=WSCloseCode.GOING_AWAY, message=b"server shutdown"), 2.0
                )

    app.on_shutdown.append(_shutdown)


def status(app: web.Application) -> dict[str, Any]:
    return {"sockets": len(app[SOCKETS].open)}
