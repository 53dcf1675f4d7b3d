"""The editor's live view: one WebSocket (``GET /api/v1/events``) of batched events.

Server -> client: ``hello``; ``counters`` (the nodes whose in/out/errors/dropped moved,
at most one message per tick, ``TICK_S`` = 0.1 s: ~10 updates/s whatever the message
rate); ``deploy`` (any deploy, rollback or delete); ``debug`` (LogNode values, paused,
filtered and capped per client); ``status`` (problems and connections, when they change);
``thinned`` (what this client missed). Client -> server: ``auth`` first (within
``AUTH_TIMEOUT_S``, else close 4401), then ``debug`` ``{"paused": bool}`` and
``debug_filter`` ``{"nodes": ["flow/node", ...] | null}``. The protocol is in
docs/editor-api.md.

A closed editor costs the hot path nothing: the sampling timer runs only while a client
is connected, counters are read from the engine's own ``NodeStats``, and LogNode's tap is
one ``if`` on an empty list. A slow client is thinned (counters merge into one pending
update, debug messages are dropped and counted) and, if even deploy or status events
overflow its bounded queue or a send stalls, dropped: nothing is buffered without bound.
"""

from __future__ import annotations

import asyncio
import collections
import hmac
import logging
import time
from collections.abc import Callable
from typing import Any

import orjson
from aiohttp import WSMsgType, web

from mechaway.nodes import debug as debug_nodes
from mechaway.runtime.engine import Engine

log = logging.getLogger("mechaway.api.events")

StatusFn = Callable[[], dict[str, Any]]

#: seconds between counter samples: at most 1 / TICK_S counters messages per client
TICK_S = 0.1
#: the status (problems, connections) is compared every this many ticks (1 s)
STATUS_EVERY = 10
#: a client must authenticate within this many seconds
AUTH_TIMEOUT_S = 5.0
#: events (deploy, status, debug...) waiting for one client, at most
QUEUE_MAX = 256
#: debug messages a client may receive per second (more are dropped and counted)
DEBUG_PER_S = 50
#: a debug value longer than this (as JSON) is sent as a truncated preview
DEBUG_VALUE_MAX = 8 * 1024
#: a send that waits this long for a client to read is a dead or hopeless client
SEND_TIMEOUT_S = 10.0
#: editors connected at once, at most (each costs a little per tick)
MAX_CLIENTS = 16
#: largest message a client may send (filters of node ids)
MAX_CLIENT_MESSAGE = 64 * 1024
#: debug filter entries, at most
MAX_FILTER = 10_000
#: status keys the editor shows
STATUS_KEYS = ("problems", "connections", "flow_file_errors")

CLOSE_AUTH = 4401
CLOSE_TOO_SLOW = 4408
CLOSE_TOO_MANY = 4429
CLOSE_GOING_AWAY = 1001


def _dumps(data: Any) -> str:
    return orjson.dumps(data, default=repr, option=orjson.OPT_NON_STR_KEYS).decode()


class Client:
    """One connected editor: its bounded queue, pending counters, debug settings."""

    def __init__(self, ws: web.WebSocketResponse, request: web.Request, hub: EventHub) -> None:
        self.ws = ws
        self.request = request
        self.queue: collections.deque[str] = collections.deque()
        self.queue_max = hub.queue_max
        #: flow -> node -> counters, merged tick after tick until the writer sends them
        self.counters: dict[str, dict[str, dict[str, int]]] = {}
        self.wake = asyncio.Event()
        self.paused = False
        #: ``"flow/node"`` keys whose debug output this client wants (None: all)
        self.filter: frozenset[str] | None = None
        self.debug_tokens = float(hub.debug_per_s)
        self.debug_dropped = 0
        self.events_dropped = 0
        self.reported = (0, 0)
        #: why the client is being dropped ("" while it is not)
        self.kick = ""
        #: counters messages handed to the socket (tests count them)
        self.counters_sent = 0
        #: the snapshot at connect goes out even when no flow runs (the editor waits for it)
        self.snapshot_due = True

    def offer(self, text: str, *, droppable: bool) -> None:
        """Queue one event; a full queue drops a droppable one (counted), and a client that
        cannot even take a control event is dropped."""
        if len(self.queue) >= self.queue_max:
            self.events_dropped += 1
            if not droppable and not self.kick:
                self.kick = "too slow: events queue full"
            self.wake.set()
            return
        self.queue.append(text)
        self.wake.set()

    def merge_counters(self, changed: dict[str, dict[str, dict[str, int]]]) -> None:
        for fid, nodes in changed.items():
            self.counters.setdefault(fid, {}).update(nodes)
        self.wake.set()


class EventHub:
    """Fans engine counters, deploys, status and debug output out to editor sockets."""

    def __init__(
        self,
        engine: Engine,
        status_fn: StatusFn,
        token: str | None,
        *,
        tick_s: float = TICK_S,
        status_every: int = STATUS_EVERY,
        queue_max: int = QUEUE_MAX,
        debug_per_s: int = DEBUG_PER_S,
        send_timeout_s: float = SEND_TIMEOUT_S,
        auth_timeout_s: float = AUTH_TIMEOUT_S,
        max_clients: int = MAX_CLIENTS,
        authorize: Callable[[Any], bool] | None = None,
    ) -> None:
        self.engine = engine
        self.status_fn = status_fn
        self.token = token
        #: the API's own token check (admin or read-only tokens, auth off): wins over token
        self.authorize = authorize
        self.tick_s = tick_s
        self.status_every = status_every
        self.queue_max = queue_max
        self.debug_per_s = debug_per_s
        self.send_timeout_s = send_timeout_s
        self.auth_timeout_s = auth_timeout_s
        self.max_clients = max_clients
        self.clients: set[Client] = set()
        #: the sampler: runs only while a client is connected (cancelled with the last one)
        self._timer: asyncio.Task[None] | None = None
        #: (flow, node) -> (in, out, errors, dropped) at the last tick
        self._last: dict[tuple[str, str], tuple[int, int, int, int]] = {}
        self._ticks = 0
        self._status: str | None = None
        self._status_failed = False
        #: counters of the hub's own life (for tests and status)
        self.ticks_run = 0
        self.clients_dropped = 0
        self.auth_failures = 0

    # -- the socket -------------------------------------------------------------------------
    async def handle(self, request: web.Request) -> web.StreamResponse:
        """``GET /api/v1/events``: authenticate, then serve events until either side closes."""
        ws = web.WebSocketResponse(heartbeat=30.0, max_msg_size=MAX_CLIENT_MESSAGE)
        await ws.prepare(request)
        if not await self._authenticate(ws):
            return ws
        if len(self.clients) >= self.max_clients:
            await ws.close(code=CLOSE_TOO_MANY, message=b"too many editors connected")
            return ws
        client = Client(ws, request, self)
        self._join(client)
        writer = asyncio.get_running_loop().create_task(
            self._write(client), name="mechaway.api.events.writer"
        )
        try:
            async for msg in ws:
                if msg.type == WSMsgType.TEXT:
                    self._on_message(client, msg.data)
                elif msg.type == WSMsgType.BINARY:
                    self._reply_error(client, "send JSON text messages")
        finally:
            writer.cancel()
            self._forget(client)  # first, and synchronously: even a cancelled handler does it
            await asyncio.gather(writer, return_exceptions=True)
            if not ws.closed:
                await ws.close()
        return ws

    async def _authenticate(self, ws: web.WebSocketResponse) -> bool:
        """The first message must be ``{"type": "auth", "token": ...}`` (a browser cannot set
        an Authorization header on a WebSocket)."""
        why = "expected {\"type\": \"auth\", \"token\": ...} first"
        try:
            msg = await asyncio.wait_for(ws.receive(), self.auth_timeout_s)
        except TimeoutError:
            msg = None
            why = f"no auth message within {self.auth_timeout_s:g} s"
        if msg is not None and msg.type == WSMsgType.TEXT:
            try:
                data = orjson.loads(msg.data)
            except orjson.JSONDecodeError:
                data = None
            if isinstance(data, dict) and data.get("type") == "auth":
                token = data.get("token")
                if self.authorize is not None:
                    if self.authorize(token if isinstance(token, str) else None):
                        return True
                elif self.token is None:
                    return True  # no token configured: the HTTP API is open too
                elif isinstance(token, str) and hmac.compare_digest(
                    token.encode("utf-8", "surrogateescape"), self.token.encode()
                ):
                    return True
                why = "wrong token"
        self.auth_failures += 1
        if not ws.closed:
            await ws.close(code=CLOSE_AUTH, message=why.encode()[:120])
        return False

    def _join(self, client: Client) -> None:
        first = not self.clients
        self.clients.add(client)
        if first:
            debug_nodes.TAPS.append(self._on_debug)
            self._last = {}  # the first sample is everything, and the baseline of the next
            if self._timer is None or self._timer.done():
                self._timer = asyncio.get_running_loop().create_task(
                    self._run(), name="mechaway.api.events.sampler"
                )
        client.offer(
            _dumps(
                {
                    "type": "hello",
                    "tick_ms": round(self.tick_s * 1000),
                    "debug_per_s": self.debug_per_s,
                    "queue_max": self.queue_max,
                }
            ),
            droppable=False,
        )
        client.merge_counters(self._sample(full=not first))
        status = self._status_text(force=True)
        if status is not None:
            client.offer(status, droppable=False)

    def _forget(self, client: Client) -> None:
        """The client is gone; with the last one the debug tap and the sampler go."""
        self.clients.discard(client)
        if not self.clients:
            if self._on_debug in debug_nodes.TAPS:
                debug_nodes.TAPS.remove(self._on_debug)
            if self._timer is not None:
                self._timer.cancel()

    @property
    def sampling(self) -> bool:
        """True while the sampling timer runs (only while an editor is connected)."""
        return self._timer is not None and not self._timer.done()

    def _on_message(self, client: Client, text: str) -> None:
        try:
            data = orjson.loads(text)
        except orjson.JSONDecodeError:
            self._reply_error(client, "not JSON")
            return
        kind = data.get("type") if isinstance(data, dict) else None
        if kind == "debug" and isinstance(data.get("paused"), bool):
            client.paused = data["paused"]
        elif kind == "debug_filter":
            nodes = data.get("nodes")
            if nodes is None:
                client.filter = None
            elif (
                isinstance(nodes, list)
                and len(nodes) <= MAX_FILTER
                and all(isinstance(n, str) for n in nodes)
            ):
                client.filter = frozenset(nodes)
            else:
                self._reply_error(
                    client, f"debug_filter: nodes must be null or at most {MAX_FILTER} strings"
                )
        elif kind == "auth":
            pass  # already authenticated
        else:
            self._reply_error(
                client,
                f"unknown message type {kind!r:.40} (expected debug or debug_filter)"
                if kind is not None
                else 'expected {"type": ...}',
            )

    def _reply_error(self, client: Client, message: str) -> None:
        client.offer(_dumps({"type": "error", "message": message}), droppable=True)

    async def _write(self, client: Client) -> None:
        """Send what the client has pending, one message at a time; drop it if it lags."""
        ws = client.ws
        try:
            while not client.kick:
                await client.wake.wait()
                client.wake.clear()
                while client.queue and not client.kick:
                    await asyncio.wait_for(
                        ws.send_str(client.queue.popleft()), self.send_timeout_s
                    )
                if (client.counters or client.snapshot_due) and not client.kick:
                    flows, client.counters = client.counters, {}
                    client.snapshot_due = False
                    client.counters_sent += 1
                    text = _dumps({"type": "counters", "ts": time.time(), "flows": flows})
                    await asyncio.wait_for(ws.send_str(text), self.send_timeout_s)
        except TimeoutError:
            client.kick = client.kick or f"too slow: a send waited {self.send_timeout_s:g} s"
        except (ConnectionError, RuntimeError):
            return  # the socket closed under us: the reader ends the session
        self.clients_dropped += 1
        log.warning("editor socket dropped: %s", client.kick)
        try:
            await asyncio.wait_for(
                ws.close(code=CLOSE_TOO_SLOW, message=client.kick.encode()[:120]), 1.0
            )
        except (TimeoutError, ConnectionError, RuntimeError):
            transport = client.request.transport
            if transport is not None:
                transport.abort()

    # -- what gets sent -----------------------------------------------------------------------
    def _sample(self, *, full: bool = False) -> dict[str, dict[str, dict[str, int]]]:
        """The counters that moved since the last tick (all of them when ``full``)."""
        changed: dict[str, dict[str, dict[str, int]]] = {}
        last = self._last
        snap: dict[tuple[str, str], tuple[int, int, int, int]] = {}
        for fid, rf in self.engine.flows.items():
            for nid, st in rf.stats.items():
                cur = (st.inp, st.out, st.errors, st.dropped)
                key = (fid, nid)
                snap[key] = cur
                if full or last.get(key) != cur:
                    changed.setdefault(fid, {})[nid] = {
                        "in": cur[0],
                        "out": cur[1],
                        "errors": cur[2],
                        "dropped": cur[3],
                    }
        if not full:
            self._last = snap
        return changed

    def _status_text(self, *, force: bool = False) -> str | None:
        """The status event if it changed since the last one (or ``force``)."""
        try:
            status = self.status_fn()
        except Exception:
            if not self._status_failed:
                log.exception("status for the events socket failed")
            self._status_failed = True
            return None
        self._status_failed = False
        text = _dumps({"type": "status", **{k: status[k] for k in STATUS_KEYS if k in status}})
        if text == self._status and not force:
            return None
        self._status = text
        return text

    def tick(self) -> None:
        """One sample: changed counters to every client, debug allowances refilled, and
        every ``status_every`` ticks the status and what each client missed."""
        self.ticks_run += 1
        self._ticks += 1
        changed = self._sample()
        refill = self.debug_per_s * self.tick_s
        for c in self.clients:
            if changed:
                c.merge_counters(changed)
            c.debug_tokens = min(float(self.debug_per_s), c.debug_tokens + refill)
        if self._ticks % self.status_every == 0:
            status = self._status_text()
            for c in self.clients:
                if status is not None:
                    c.offer(status, droppable=False)
                missed = (c.debug_dropped, c.events_dropped)
                if missed != c.reported:
                    c.reported = missed
                    c.offer(
                        _dumps({"type": "thinned", "debug": missed[0], "events": missed[1]}),
                        droppable=True,
                    )

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self.tick_s)
            try:
                self.tick()
            except Exception:  # a bad status function must not end the live view
                log.exception("events tick failed")

    def on_change(self, event: dict[str, Any]) -> None:
        """FlowManager hook: a deploy, rollback or delete was recorded."""
        if not self.clients:
            return
        text = _dumps({"type": "deploy", **event})
        for c in self.clients:
            c.offer(text, droppable=False)

    def _on_debug(self, flow_id: str, node_id: str, value: Any) -> None:
        """LogNode's tap (only registered while a client is connected)."""
        text: str | None = None
        key = f"{flow_id}/{node_id}"
        for c in self.clients:
            if c.paused or (c.filter is not None and key not in c.filter):
                continue
            if c.debug_tokens < 1.0:
                c.debug_dropped += 1
                continue
            if len(c.queue) >= c.queue_max - c.queue_max // 4:
                c.debug_dropped += 1  # the last quarter is kept for deploy and status events
                continue
            c.debug_tokens -= 1.0
            if text is None:
                text = debug_text(flow_id, node_id, value)
            c.offer(text, droppable=True)

    async def close(self, app: web.Application | None = None) -> None:
        """Close every socket (the app is shutting down) and stop the timer."""
        for c in list(self.clients):
            if not c.ws.closed:
                try:
                    await asyncio.wait_for(
                        c.ws.close(code=CLOSE_GOING_AWAY, message=b"server shutdown"), 2.0
                    )
                except (TimeoutError, ConnectionError, RuntimeError):
                    transport = c.request.transport
                    if transport is not None:
                        transport.abort()
            self._forget(c)
        if self._timer is not None:
            self._timer.cancel()
            await asyncio.gather(self._timer, return_exceptions=True)


def debug_text(flow_id: str, node_id: str, value: Any) -> str:
    """A ``debug`` event; a value over ``DEBUG_VALUE_MAX`` bytes of JSON as a preview."""
    try:
        body = orjson.dumps(value, default=repr, option=orjson.OPT_NON_STR_KEYS)
    except TypeError:  # an int beyond 64 bits, a nesting too deep
        body = orjson.dumps(repr(value)[: DEBUG_VALUE_MAX])
    if len(body) > DEBUG_VALUE_MAX:
        preview = body[:DEBUG_VALUE_MAX].decode("utf-8", "ignore")
        body = orjson.dumps({"truncated": True, "bytes": len(body), "preview": preview})
    head = orjson.dumps({"type": "debug", "flow": flow_id, "node": node_id, "ts": time.time()})
    return (head[:-1] + b',"value":' + body + b"}").decode()
