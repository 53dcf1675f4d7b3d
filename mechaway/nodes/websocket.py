"""WebSocket nodes: an endpoint of the daemon's, or a client of a server.

``WebSocketInNode`` (messages in) and ``WebSocketOutNode`` (out), either on an endpoint of
the daemon's own HTTP server, ``/ws/{flow_id}/{path}`` (``path``), or as a client of a
server (``connection``: a ``[websocket.NAME]`` driver connection).

The server side: the nodes of one flow naming one ``path`` share an ``Endpoint`` (created
by the first node that starts, closed with the last that stops, so a hot swap keeps the
clients connected). ``mechaway.api.websocket`` accepts the sockets, checks the token and
runs each client's reader and writer; this module holds the routing and the bounds, and
imports no aiohttp. Every client has an id; what a client sends carries it in
``msg.ws.client``, and a ``WebSocketOutNode`` sends a message carrying one to that client
only (the reply reaches who asked), else to every client (broadcast). Each client has a
bounded queue (``queue_size``): a client that does not read fast enough loses its oldest
messages (``slow_client = "drop"``, counted) or is disconnected (``"close"``, code 4408);
a send that waits ``send_timeout_s`` disconnects it too. Nothing is buffered without
bound.
"""

from __future__ import annotations

import asyncio
import collections
import hashlib
import itertools
import os
import time
from collections.abc import Awaitable
from typing import Annotated, Any, ClassVar, Literal, Protocol

from msgspec import Meta

from mechaway.codec import DECODERS, ENCODERS, LENIENT_ENCODERS, Codec, describe
from mechaway.nodes.base import (
    Message,
    Node,
    NodeParams,
    Result,
    SourceNode,
    get_path,
    split_path,
)
from mechaway.nodes.context import NodeContext
from mechaway.nodes.http import PATH_PATTERN, TokenStr, normalize_path
from mechaway.nodes.registry import register_node

__all__ = [
    "CLOSE_TOO_SLOW",
    "Client",
    "Endpoint",
    "WebSocketInNode",
    "WebSocketOutNode",
    "endpoint",
    "endpoints",
]

#: close code for a client dropped for reading too slowly
CLOSE_TOO_SLOW = 4408
_PREFIX = os.urandom(3).hex()
_SEQ = itertools.count(1)


class Peer(Protocol):
    """The socket under a client (aiohttp's WebSocketResponse, in the API)."""

    async def send_str(self, data: str) -> None: ...

    async def send_bytes(self, data: bytes) -> None: ...


class Client:
    """One connected client: its id, bounded queue and counters."""

    __slots__ = ("dropped", "endpoint", "id", "kick", "peer", "queue", "received", "sent",
                 "since", "wake")  # fmt: skip

    def __init__(self, ep: Endpoint, peer: Peer) -> None:
        self.id = f"{_PREFIX}-{next(_SEQ):x}"
        self.endpoint = ep
        self.peer = peer
        self.queue: collections.deque[str | bytes] = collections.deque()
        self.wake = asyncio.Event()
        #: why the client is being disconnected ("" while it is not)
        self.kick = ""
        self.sent = 0
        self.received = 0
        self.dropped = 0
        self.since = time.time()

    def offer(self, data: str | bytes) -> int:
        """Queue one message; returns how many messages were dropped (0 or 1)."""
        if self.kick:
            return 1
        ep = self.endpoint
        if len(self.queue) >= ep.queue_size:
            if ep.slow_client == "close":
                self.kick = f"too slow: {ep.queue_size} messages waiting"
                self.wake.set()
                self.dropped += 1
                ep.slow_closed += 1
                return 1
            self.queue.popleft()
            self.queue.append(data)
            self.dropped += 1
            self.wake.set()
            return 1
        self.queue.append(data)
        self.wake.set()
        return 0

    async def run_writer(self) -> None:
        """Send what is queued until the client is kicked (or the task is cancelled)."""
        q = self.queue
        timeout = self.endpoint.send_timeout_s
        peer = self.peer
        while not self.kick:
            await self.wake.wait()
            self.wake.clear()
            while q and not self.kick:
                data = q.popleft()
                try:
                    if isinstance(data, str):
                        await asyncio.wait_for(peer.send_str(data), timeout)
                    else:
                        await asyncio.wait_for(peer.send_bytes(data), timeout)
                except TimeoutError:
                    self.kick = f"too slow: a send waited {timeout:g} s"
                    self.endpoint.slow_closed += 1
                    return
                self.sent += 1


class Endpoint:
    """``/ws/{flow}/{path}``: its clients, the In nodes that receive, the token(s)."""

    def __init__(self, flow_id: str, path: str) -> None:
        self.flow_id = flow_id
        self.path = path
        self.users: list[Node[Any]] = []
        self.inputs: list[WebSocketInNode] = []
        self.clients: dict[str, Client] = {}
        self.tokens: list[tuple[bool, bytes]] = []
        # the bounds, from the WebSocketOutNode started last (defaults without one)
        self.queue_size = 100
        self.slow_client: Literal["drop", "close"] = "drop"
        self.send_timeout_s = 10.0
        self.max_clients = 64
        self.max_message_bytes = 1 << 20
        # counters
        self.connects = 0
        self.refused = 0
        self.slow_closed = 0
        self.dropped = 0

    @property
    def url_path(self) -> str:
        return f"/ws/{self.flow_id}/{self.path}"

    def _refresh(self) -> None:
        tokens = []
        for n in self.users:
            tok = getattr(n.params, "token", None)
            if tok:
                tokens.append(_token_key(tok))
        self.tokens = tokens
        sizes = [n.params.max_message_bytes for n in self.inputs]
        self.max_message_bytes = max(sizes) if sizes else 1 << 20

    @property
    def protected(self) -> bool:
        return bool(self.tokens)

    def authorize(self, presented: bytes | None) -> bool:
        """Any token set on a node of this endpoint opens it (constant time each)."""
        if not self.tokens:
            return True
        if presented is None:
            return False
        import hmac  # here: a daemon without protected endpoints never loads it

        ok = False
        digest = hashlib.sha256(presented).hexdigest().encode()
        for hashed, tok in self.tokens:
            ok |= hmac.compare_digest(digest if hashed else presented, tok)
        return ok

    def join(self, peer: Peer) -> Client | None:
        """A new client, or None when the endpoint is full (``max_clients``)."""
        if len(self.clients) >= self.max_clients:
            self.refused += 1
            return None
        c = Client(self, peer)
        self.clients[c.id] = c
        self.connects += 1
        return c

    def leave(self, client: Client) -> None:
        self.clients.pop(client.id, None)

    def receive(self, client: Client, data: str | bytes) -> Awaitable[None] | None:
        """A message from a client, to every In node (an awaitable: the flow is full)."""
        client.received += 1
        waiting = None
        for node in self.inputs:
            w = node.receive(data, {"client": client.id, "path": self.url_path})
            waiting = waiting or w
        return waiting

    def send(self, data: str | bytes, client_id: str | None) -> tuple[int, int]:
        """To one client (``client_id``) or all: (sent, dropped)."""
        if client_id is not None:
            c = self.clients.get(client_id)
            if c is None:
                self.dropped += 1
                return 0, 1
            d = c.offer(data)
            self.dropped += d
            return 1 - d, d
        sent = dropped = 0
        for c in self.clients.values():
            d = c.offer(data)
            dropped += d
            sent += 1 - d
        self.dropped += dropped
        return sent, dropped

    def status(self) -> dict[str, Any]:
        return {
            "clients": len(self.clients),
            "connects": self.connects,
            "refused": self.refused,
            "slow_closed": self.slow_closed,
            "dropped": self.dropped,
            "queued": sum(len(c.queue) for c in self.clients.values()),
        }


def _token_key(token: str) -> tuple[bool, bytes]:
    if token.startswith("sha256:"):
        return True, token[len("sha256:") :].lower().encode()
    return False, token.encode()


#: (flow id, path) -> its endpoint, while a node uses it
_ENDPOINTS: dict[tuple[str, str], Endpoint] = {}


def endpoint(flow_id: str, path: str) -> Endpoint | None:
    """The endpoint served at ``/ws/{flow_id}/{path}``, if a running node has it."""
    return _ENDPOINTS.get((flow_id, normalize_path(path)))


def endpoints() -> list[Endpoint]:
    return list(_ENDPOINTS.values())


def _acquire(node: Node[Any], flow_id: str, path: str) -> Endpoint:
    key = (flow_id, normalize_path(path))
    ep = _ENDPOINTS.get(key)
    if ep is None:
        ep = _ENDPOINTS[key] = Endpoint(*key)
    ep.users.append(node)
    if isinstance(node, WebSocketInNode):
        ep.inputs.append(node)
    if isinstance(node, WebSocketOutNode):
        p = node.params
        ep.queue_size, ep.slow_client = p.queue_size, p.slow_client
        ep.send_timeout_s, ep.max_clients = p.send_timeout_s, p.max_clients
    ep._refresh()
    return ep


def _release(node: Node[Any], ep: Endpoint) -> None:
    if node in ep.users:
        ep.users.remove(node)
    if isinstance(node, WebSocketInNode) and node in ep.inputs:
        ep.inputs.remove(node)
    ep._refresh()
    if not ep.users:
        if _ENDPOINTS.get((ep.flow_id, ep.path)) is ep:
            del _ENDPOINTS[(ep.flow_id, ep.path)]
        for c in ep.clients.values():  # the API's handlers close the sockets
            c.kick = c.kick or "endpoint removed"
            c.wake.set()


# -- params shared by both nodes ----------------------------------------------------------------
PathStr = Annotated[str, Meta(pattern=PATH_PATTERN)]
ConnectionStr = Annotated[str, Meta(min_length=1)]
_PATH = Meta(
    description="serve the endpoint /ws/{flow_id}/{path} on the daemon's HTTP port (set "
    "this or connection)",
)
_CONNECTION = Meta(
    description="be a client of the [websocket.NAME] connection's server (set this or path)",
)
_TOKEN = Meta(
    description="endpoint only: clients must present it (Authorization: Bearer, "
    "X-Mechaway-Token, or a first message {\"type\": \"auth\", \"token\": ...}); "
    "sha256:<64 hex> stores its hash. Several nodes on one path: any of their tokens opens it",
)


def _one_of(path: str | None, connection: str | None) -> None:
    if (path is None) == (connection is None):
        raise ValueError("set exactly one of path (an endpoint here) or connection (a client)")


class WebSocketInParams(NodeParams):
    path: Annotated[PathStr | None, _PATH] = None
    connection: Annotated[ConnectionStr | None, _CONNECTION] = None
    token: Annotated[TokenStr | None, _TOKEN] = None
    decode: Annotated[
        Codec,
        Meta(description="how a message's data is decoded: json, msgpack, text or bytes"),
    ] = "json"
    max_message_bytes: Annotated[
        int,
        Meta(
            ge=16,
            le=64 << 20,
            description="endpoint only: largest message a client may send (larger: the "
            "socket is closed with 1009)",
        ),
    ] = 1 << 20

    def __post_init__(self) -> None:
        super().__post_init__()
        _one_of(self.path, self.connection)


@register_node("WebSocketInNode")
class WebSocketInNode(SourceNode[WebSocketInParams]):
    """Each WebSocket message becomes ``{payload, topic, ts, ws}``: ``ws`` is
    ``{client, path}`` on an endpoint (keep it for a reply to that client) or
    ``{connection}`` as a client. Data that does not decode is counted and sent to the
    ``error`` port (base64)."""

    Params = WebSocketInParams
    ports: ClassVar[tuple[str, ...]] = ("out",)

    def __init__(self, node_id: str, params: WebSocketInParams, ctx: NodeContext) -> None:
        super().__init__(node_id, params, ctx)
        self._decode = DECODERS[params.decode]
        self._json = params.decode == "json"
        self.topic = normalize_path(params.path) if params.path else (params.connection or "")
        self._ep: Endpoint | None = None
        self._driver: Any = None
        self._handler: Any = None
        self.decode_errors = 0

    @classmethod
    def claims(cls, params: WebSocketInParams) -> tuple[str, ...]:
        if params.path is None:
            return ()
        return (f"WebSocket endpoint /{normalize_path(params.path)} (its input)",)

    async def start(self) -> None:
        p = self.params
        if p.path is not None:
            self._ep = _acquire(self, self.ctx.flow_id, p.path)
            return
        assert p.connection is not None
        self._driver = await self.ctx.services.connection("websocket", p.connection)
        conn = {"connection": p.connection}
        self._handler = self._driver.subscribe(lambda data: self.receive(data, conn))

    async def stop(self) -> None:
        if self._ep is not None:
            _release(self, self._ep)
            self._ep = None
        if self._driver is not None and self._handler is not None:
            self._driver.unsubscribe(self._handler)
            self._handler = None

    def receive(self, data: str | bytes, ws: dict[str, Any]) -> Awaitable[None] | None:
        """One message in; an awaitable when the flow is full (the reader waits)."""
        # a text message goes to orjson as it is (it takes str); other decoders take bytes
        raw = data if self._json or isinstance(data, bytes) else data.encode()
        try:
            payload = self._decode(raw)  # type: ignore[arg-type]
        except ValueError as exc:
            self.decode_errors += 1
            st = self.stats
            st.errors += 1
            st.last_error = f"decode ({self.params.decode}) failed: {describe(exc)}"
            st.last_error_ts = time.time()
            self.ctx.burst.warning("%s", st.last_error)
            blob = raw if isinstance(raw, bytes) else raw.encode()
            self.emit(
                {
                    "payload": DECODERS["bytes"](blob),
                    "topic": self.topic,
                    "ts": time.time(),
                    "ws": ws,
                    "error": {"node": self.id, "type": "DecodeError", "message": describe(exc)},
                },
                "error",
            )
            return None
        self.emit({"payload": payload, "topic": self.topic, "ts": time.time(), "ws": ws})
        return self.room() if self.blocked() else None

    def status(self) -> dict[str, Any] | None:
        out: dict[str, Any] = {"decode_errors": self.decode_errors}
        if self._ep is not None:
            out.update(self._ep.status())
        return out


class WebSocketOutParams(NodeParams):
    path: Annotated[PathStr | None, _PATH] = None
    connection: Annotated[ConnectionStr | None, _CONNECTION] = None
    token: Annotated[TokenStr | None, _TOKEN] = None
    encode: Annotated[
        Codec,
        Meta(
            description="how the value is sent: json (a text message), text, msgpack or "
            "bytes (binary messages)"
        ),
    ] = "json"
    property: Annotated[
        str, Meta(description='what is sent: a dotted path into the message, "" for all')
    ] = "payload"
    to_client: Annotated[
        bool,
        Meta(
            description="endpoint only: a message carrying ws.client goes to that client "
            "alone (gone: dropped and counted); false: every message to every client"
        ),
    ] = True
    queue_size: Annotated[
        int,
        Meta(
            ge=1,
            le=100_000,
            description="endpoint only: messages waiting for one client, at most",
        ),
    ] = 100
    slow_client: Annotated[
        Literal["drop", "close"],
        Meta(
            description="endpoint only: a client whose queue is full loses its oldest "
            "message (drop, counted) or is disconnected with code 4408 (close)"
        ),
    ] = "drop"
    send_timeout_s: Annotated[
        float,
        Meta(
            gt=0,
            le=600,
            description="endpoint only: a send that waits this long for a client to read "
            "disconnects it (4408)",
        ),
    ] = 10.0
    max_clients: Annotated[
        int,
        Meta(ge=1, le=10_000, description="endpoint only: clients connected at once, at most"),
    ] = 64

    def __post_init__(self) -> None:
        super().__post_init__()
        _one_of(self.path, self.connection)


@register_node("WebSocketOutNode")
class WebSocketOutNode(Node[WebSocketOutParams]):
    """Send each message's ``property``, encoded, to the endpoint's clients (the one in
    ``msg.ws.client``, else all) or to the connection's server.

    A hand-off to bounded per-client queues (or the connection's send queue): called
    directly on the hot path, no queue or task of its own. The queue bounds of an
    endpoint are those of the ``WebSocketOutNode`` started last on its path."""

    Params = WebSocketOutParams
    ports: ClassVar[tuple[str, ...]] = ()

    def __init__(self, node_id: str, params: WebSocketOutParams, ctx: NodeContext) -> None:
        super().__init__(node_id, params, ctx)
        self._keys = split_path(params.property)
        self._encode = ENCODERS[params.encode]
        self._lenient = LENIENT_ENCODERS[params.encode]
        self._text = params.encode in ("json", "text")
        self._ep: Endpoint | None = None
        self._driver: Any = None
        self.sent = 0
        self.no_client = 0

    async def start(self) -> None:
        p = self.params
        if p.path is not None:
            self._ep = _acquire(self, self.ctx.flow_id, p.path)
            return
        self._driver = await self.ctx.services.connection("websocket", p.connection or "")

    async def stop(self) -> None:
        if self._ep is not None:
            _release(self, self._ep)
            self._ep = None

    def _data(self, msg: Message) -> str | bytes:
        value = get_path(msg, self._keys) if self._keys else msg
        try:
            raw = self._encode(value)
        except TypeError:
            raw = self._lenient(value)
        return raw.decode() if self._text else raw

    def process(self, msg: Message) -> Result:
        data = self._data(msg)
        ep = self._ep
        if ep is not None:
            target = None
            if self.params.to_client:
                ws = msg.get("ws")
                if type(ws) is dict:
                    cid = ws.get("client")
                    target = cid if isinstance(cid, str) else None
            sent, dropped = ep.send(data, target)
            self.sent += sent
            if dropped:
                self.stats.dropped += dropped
                if target is not None and target not in ep.clients:
                    self.no_client += 1
            return None
        if self._driver.send(data):
            self.sent += 1
        else:
            self.stats.dropped += 1
        return None

    def status(self) -> dict[str, Any] | None:
        out: dict[str, Any] = {"sent": self.sent, "no_client": self.no_client}
        if self._ep is not None:
            out.update(self._ep.status())
        return out

