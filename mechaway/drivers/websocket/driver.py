"""The WebSocket client driver: one connection per ``[websocket.NAME]`` to a server URL.

Why a driver: the connection is held open, shared by the ``WebSocketInNode``s and
``WebSocketOutNode``s that name it, and must come back by itself after the server or the
network went away. The layer's ``Supervisor`` does that (jittered exponential backoff,
once-per-burst logging, ``reconnects`` in the status); the URL and any credentials live in
the config, not in a flow document (which a read-only API token can read).

Receiving: every text or binary message is handed to each subscriber; a subscriber may
return an awaitable (its flow is full), and reading pauses until it completes, so
backpressure reaches the server through TCP. Sending: ``send`` puts the message on a
bounded queue (``send_queue``; when full the oldest waiting message is dropped and
counted) that one writer task empties while the link is up. Nothing is queued while the
link is down: such a send is dropped and counted (``dropped_offline``); a message is never
replayed into a later connection.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
from collections.abc import Awaitable, Callable
from typing import Annotated, Any

import msgspec

from mechaway.drivers.base import (
    Driver,
    DriverEnv,
    DriverSettings,
    LinkFailed,
    Supervisor,
    register_driver,
)
from mechaway.errors import ConfigError
from mechaway.tasks import OwnedTask

__all__ = ["COUNTERS", "Handler", "WebSocketDriver", "WebSocketSettings"]

COUNTERS = ("messages_in", "bytes_in", "messages_out", "bytes_out", "dropped_offline",
            "dropped_full", "send_failures")  # fmt: skip

#: what a subscriber gets: the message (text as ``str``, binary as ``bytes``)
Handler = Callable[[str | bytes], Awaitable[None] | None]


class WebSocketSettings(DriverSettings):
    """``[websocket.NAME]``: a WebSocket server this daemon connects to as a client."""

    url: Annotated[
        str,
        msgspec.Meta(pattern=r"^wss?://[^\s]+$", description="ws:// or wss:// URL to connect to"),
    ]
    headers: Annotated[
        dict[str, str],
        msgspec.Meta(description="extra headers of the opening handshake"),
    ] = msgspec.field(default_factory=dict)
    token: Annotated[
        str | None,
        msgspec.Meta(description="sent as Authorization: Bearer <token> in the handshake "
                     "(a mechaway /ws/ endpoint's token, say)"),
    ] = None
    heartbeat_s: Annotated[
        float,
        msgspec.Meta(ge=0, le=3600, description="seconds between pings; a server that does "
                     "not answer one within half of it is taken as gone (0: no pings)"),
    ] = 30.0
    connect_timeout_s: Annotated[
        float, msgspec.Meta(gt=0, le=600, description="seconds an opening handshake may take")
    ] = 10.0
    max_message_bytes: Annotated[
        int,
        msgspec.Meta(ge=1024, le=64 << 20, description="largest message accepted from the "
                     "server (a larger one closes the connection, which then reconnects)"),
    ] = 1 << 20
    send_queue: Annotated[
        int,
        msgspec.Meta(ge=1, le=100_000, description="messages waiting to be sent, at most "
                     "(the oldest is dropped and counted when full)"),
    ] = 256
    send_timeout_s: Annotated[
        float,
        msgspec.Meta(gt=0, le=600, description="a send that waits this long for the server "
                     "to read ends the connection (it reconnects)"),
    ] = 10.0
    verify_tls: Annotated[
        bool, msgspec.Meta(description="check the server's TLS certificate (wss://)")
    ] = True
    ca_file: Annotated[
        str | None,
        msgspec.Meta(description="PEM file of the certificate authorities to trust (wss://)"),
    ] = None


class _Link:
    """One open connection: the socket, its send queue and writer."""

    def __init__(self, ws: Any, label: str) -> None:
        self.ws = ws
        self.queue: collections.deque[str | bytes] = collections.deque()
        self.wake = asyncio.Event()
        self.writer = OwnedTask(f"{label}.writer")
        #: set by the writer when a send failed: the link is given up
        self.dead: asyncio.Future[str] = asyncio.get_running_loop().create_future()


@register_driver("websocket")
class WebSocketDriver(Driver[WebSocketSettings]):
    """A WebSocket client connection kept up by the Supervisor; see the module docstring."""

    Settings = WebSocketSettings

    def __init__(
        self, name: str, settings: WebSocketSettings, env: DriverEnv | None = None
    ) -> None:
        super().__init__(name, settings, env)
        self.health.counters.update(dict.fromkeys(COUNTERS, 0))
        self._session: Any = None
        self._aiohttp: Any = None
        self._sup: Supervisor[_Link] | None = None
        self._link: _Link | None = None
        self._handlers: list[Handler] = []
        self._up = asyncio.Event()

    # -- lifecycle ------------------------------------------------------------------------
    async def start(self) -> None:
        if self._sup is not None:
            return
        import ssl

        import aiohttp

        s = self.settings
        ctx: ssl.SSLContext | bool = False
        if s.url.startswith("wss://"):
            if not s.verify_tls:
                self.log.warning("%s: TLS certificates are NOT checked", self.label)
            else:
                try:
                    ctx = ssl.create_default_context(cafile=s.ca_file)
                except (OSError, ssl.SSLError) as err:
                    raise ConfigError(f"{self.label}.ca_file: cannot load: {err}") from err
        self._ssl = ctx if s.url.startswith("wss://") else True
        self._aiohttp = aiohttp
        self._session = aiohttp.ClientSession()
        self._sup = Supervisor(
            self.label, self.health, s, open=self._open, lost=self._lost, up=self._on_up,
            release=self._release, logger=self.log, target=_redact(s.url),
        )  # fmt: skip
        self._sup.start()

    async def close(self, timeout: float = 5.0) -> None:
        sup, self._sup = self._sup, None
        if sup is not None:
            sup.closing = True
            link = self._link
            if link is not None:  # ends the reader, so the supervisor returns at once
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(link.ws.close(), timeout)
            await asyncio.wait_for(sup.stop(), timeout)
        session, self._session = self._session, None
        if session is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(session.close(), timeout)
        self.health.set("closed")

    @property
    def connected(self) -> bool:
        return self._link is not None

    async def wait_connected(self, timeout: float) -> bool:
        """True once connected (within ``timeout`` seconds), else False."""
        try:
            await asyncio.wait_for(self._up.wait(), timeout)
        except TimeoutError:
            return False
        return True

    # -- the link -------------------------------------------------------------------------
    async def _open(self) -> _Link:
        aiohttp, s = self._aiohttp, self.settings
        headers = dict(s.headers)
        if s.token:
            headers["Authorization"] = f"Bearer {s.token}"
        try:
            ws = await asyncio.wait_for(
                self._session.ws_connect(
                    s.url, headers=headers, heartbeat=s.heartbeat_s or None,
                    max_msg_size=s.max_message_bytes, ssl=self._ssl, autoping=True,
                ),
                s.connect_timeout_s,
            )  # fmt: skip
        except aiohttp.WSServerHandshakeError as err:
            kind = "auth refused" if err.status in (401, 403) else "refused"
            raise LinkFailed(kind, f"handshake refused: HTTP {err.status} {err.message}") from None
        except aiohttp.ClientConnectionError as err:
            raise LinkFailed("unreachable", str(err) or type(err).__name__) from None
        except aiohttp.ClientError as err:
            raise LinkFailed("protocol error", str(err) or type(err).__name__) from None
        return _Link(ws, self.label)

    def _on_up(self, link: _Link) -> None:
        self._link = link
        self._up.set()
        link.writer.start(lambda: self._write(link))

    async def _lost(self, link: _Link) -> str:
        """Until the connection ends (the server closed it, or a send failed): why."""
        reader = asyncio.ensure_future(self._read(link))
        try:
            await asyncio.wait({reader, link.dead}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            if not reader.done():
                reader.cancel()
                await asyncio.gather(reader, return_exceptions=True)
        if link.dead.done():
            return link.dead.result()
        return reader.result()

    async def _read(self, link: _Link) -> str:
        aiohttp = self._aiohttp
        c = self.health.counters
        ws = link.ws
        async for msg in ws:
            if msg.type in (aiohttp.WSMsgType.TEXT, aiohttp.WSMsgType.BINARY):
                data = msg.data
                c["messages_in"] += 1
                c["bytes_in"] += len(data)
                for handler in tuple(self._handlers):
                    try:
                        waiting = handler(data)
                        if waiting is not None:
                            await waiting
                    except Exception:  # a node's bug must not end the connection
                        self.log.exception("%s: a subscriber failed", self.label)
            elif msg.type == aiohttp.WSMsgType.ERROR:
                return f"error: {ws.exception() or 'unknown'}"
        code = ws.close_code
        return f"closed (code {code})" if code is not None else "closed"

    async def _release(self, link: _Link) -> None:
        if self._link is link:
            self._link = None
            self._up.clear()
        await link.writer.stop()
        if link.queue:
            self.health.count("dropped_offline", len(link.queue))
            link.queue.clear()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(link.ws.close(), 2.0)

    async def _write(self, link: _Link) -> None:
        c = self.health.counters
        ws, q = link.ws, link.queue
        timeout = self.settings.send_timeout_s
        while True:
            await link.wake.wait()
            link.wake.clear()
            while q:
                data = q.popleft()
                try:
                    if isinstance(data, str):
                        await asyncio.wait_for(ws.send_str(data), timeout)
                    else:
                        await asyncio.wait_for(ws.send_bytes(data), timeout)
                except (TimeoutError, ConnectionError, RuntimeError) as err:
                    c["send_failures"] += 1
                    why = "send timed out" if isinstance(err, TimeoutError) else "send failed"
                    if not link.dead.done():  # the supervisor gives the link up, reconnects
                        link.dead.set_result(f"{why}: {type(err).__name__}")
                    return
                c["messages_out"] += 1
                c["bytes_out"] += len(data)

    # -- what nodes use -------------------------------------------------------------------
    def subscribe(self, handler: Handler) -> Handler:
        self._handlers.append(handler)
        return handler

    def unsubscribe(self, handler: Handler) -> None:
        if handler in self._handlers:
            self._handlers.remove(handler)

    def send(self, data: str | bytes) -> bool:
        """Queue one message for the server; False when it was dropped (counted)."""
        link = self._link
        if link is None:
            self.health.counters["dropped_offline"] += 1
            return False
        q = link.queue
        dropped = False
        if len(q) >= self.settings.send_queue:
            q.popleft()
            self.health.counters["dropped_full"] += 1
            dropped = True
        q.append(data)
        link.wake.set()
        return not dropped

    def extra_status(self) -> dict[str, Any]:
        link = self._link
        return {"url": _redact(self.settings.url), "queued": len(link.queue) if link else 0}


def _redact(url: str) -> str:
    """The URL without user info or query (which may carry credentials)."""
    scheme, sep, rest = url.partition("://")
    host_path = rest.rsplit("@", 1)[-1]
    return f"{scheme}{sep}{host_path.split('?', 1)[0]}"
