"""MQTT driver: one ``MqttConnection`` per ``[mqtt.NAME]`` section, shared by every node using it.

It knows nothing of flows. It owns reconnection (jittered exponential backoff, resubscribe),
the device's birth/last-will topic, the order and durability of QoS>=1 publishes across
outages (through a ``Spool``), and turns every bad input (refused or wrong credentials,
oversize payloads, a handler that raises, a broker that breaks MQTT or goes silent) into a
counter and one log line per burst.

The client library is gmqtt (chosen by ``benchmarks/mqtt_clients.py``: ~6x aiomqtt 2's
throughput at a tenth of its CPU per message). It is imported lazily and reached only
through ``_GmqttSession``, the one place that knows its API: swapping the library means
writing another session class with the same five methods.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import itertools
import logging
import os
import random
import socket
import ssl
import sys
import time
from collections import deque
from collections.abc import Awaitable, Callable, Mapping
from concurrent.futures import Future as ThreadFuture
from dataclasses import dataclass, field
from typing import Annotated, Any, Literal, Protocol

import msgspec

from mechaway.drivers.base import Driver, DriverEnv, DriverSettings, register_driver
from mechaway.errors import ConfigError, MechawayError, NotConnected, StoreUnavailable

__all__ = [
    "Incoming",
    "MemorySpool",
    "MqttConnection",
    "MqttSettings",
    "Spool",
    "SpoolItem",
    "Subscription",
    "check_filter",
    "parse_settings",
    "topic_matches",
]

log = logging.getLogger(__name__)

#: (id, topic, payload, qos, retain); ids increase with every append
SpoolItem = tuple[int, str, bytes, int, bool]
Handler = Callable[["Incoming"], Awaitable[None] | None]

#: a connection that stayed up this long ends a burst of failures (backoff and logging reset)
#: at most this many async handler runs in flight; QoS 0 beyond it is dropped and counted
_MAX_PENDING_HANDLERS = 10_000
_ROUTE_CACHE_MAX = 4096
_AUTH_CODES = frozenset({4, 5, 134, 135, 140})
#: topic aliases a broker may set although the client allows none (MQTT 5 says it must
#: not; tolerated, bounded: each may name a 64 KB topic); more, or alias 0, end the session
_MAX_ALIASES = 16
#: an incoming packet this much over ``max_payload_bytes`` (topic, properties) is not
#: gathered in memory: a PUBLISH is skipped as it arrives (counted, acked), anything else
#: ends the session
_PACKET_SLACK = 128 * 1024
#: QoS>0 messages a broker may send us unacknowledged (MQTT 5's default receive maximum)
_RECEIVE_MAX = 65_535


# ---------------------------------------------------------------------------------------
# Settings
# ---------------------------------------------------------------------------------------
class MqttSettings(DriverSettings):
    """One ``[mqtt.NAME]`` section. Constraints are checked by ``parse_settings``."""

    host: str = "127.0.0.1"
    port: Annotated[int, msgspec.Meta(ge=1, le=65535)] = 1883
    #: default ``mechaway-<device id>-<connection name>`` (stable, for persistent sessions)
    client_id: str | None = None
    username: str | None = None
    password: str | None = None
    tls: bool = False
    ca_file: str | None = None
    cert_file: str | None = None
    key_file: str | None = None
    keepalive: Annotated[int, msgspec.Meta(ge=0, le=65535)] = 60
    #: False = persistent session (MQTT 5: kept ``session_expiry`` seconds after a drop)
    clean_session: bool = True
    #: MQTT 5 carries it in 4 bytes (0xFFFFFFFF = never expires)
    session_expiry: Annotated[int, msgspec.Meta(ge=0, le=0xFFFFFFFF)] = 3600
    protocol: Literal["3.1.1", "5"] = "5"
    #: larger incoming payloads are dropped and counted before any handler; larger
    #: outgoing ones are refused and counted (MQTT caps a packet at 256 MB)
    max_payload_bytes: Annotated[int, msgspec.Meta(ge=1, le=255 * 1024 * 1024)] = 256 * 1024
    #: QoS 0 published while disconnected: dropped (counted) or spooled like QoS 1
    offline_qos0: Literal["drop", "queue"] = "drop"
    spool_max: Annotated[int, msgspec.Meta(ge=0)] = 100_000
    spool_overflow: Literal["drop_oldest", "drop_new"] = "drop_oldest"
    #: QoS>=1 publishes awaiting their ack at once (also capped by the broker's window)
    max_inflight: Annotated[int, msgspec.Meta(ge=1, le=60_000)] = 100
    #: QoS 0 is dropped (counted) while this much is unsent in the socket's buffer
    max_write_buffer_bytes: Annotated[int, msgspec.Meta(ge=1024)] = 4 * 1024 * 1024
    connect_timeout: Annotated[float, msgspec.Meta(gt=0, le=3600)] = 10.0
    #: publish retained ``online``/``offline`` on ``mechaway/<device id>/status``
    birth: bool = True

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.key_file and not self.cert_file:
            raise ValueError("key_file needs cert_file")


def parse_settings(data: Mapping[str, Any], where: str = "mqtt.default") -> MqttSettings:
    """Validate one ``[mqtt.NAME]`` table; ConfigError names the key (``mqtt.plc.port: ...``).

    Strict like every section: ``port = "1883"`` is an error, not a number."""
    settings = MqttConnection.parse_settings(data, where)
    assert isinstance(settings, MqttSettings)
    return settings


# ---------------------------------------------------------------------------------------
# Spool: durable FIFO of publishes waiting for the broker
# ---------------------------------------------------------------------------------------
class Spool(Protocol):
    """A FIFO of pending publishes; the SQLite one makes them survive a restart.

    Called on the event loop thread; every method must be quick (``__len__`` above all:
    it is checked on each QoS>=1 publish). The connection enforces the bound and the
    overflow policy before ``append``.

    ``append`` returns a future that resolves once the item is on disk (``durable``: fsynced
    too), or None when there is nothing to wait for (a memory spool, an item dropped).
    """

    def append(
        self, topic: str, payload: bytes, qos: int, retain: bool, durable: bool = False
    ) -> ThreadFuture[Any] | None: ...

    def peek(self, n: int) -> list[SpoolItem]: ...

    def remove_upto(self, id_: int) -> None: ...

    def __len__(self) -> int: ...


class MemorySpool:
    """In-memory ``Spool``: bounded, with a drop policy; ``dropped`` counts what it shed."""

    def __init__(
        self, max_items: int = 100_000, overflow: Literal["drop_oldest", "drop_new"] = "drop_oldest"
    ) -> None:
        self.max_items = max_items
        self.overflow = overflow
        self.dropped = 0
        self._items: deque[SpoolItem] = deque()
        self._ids = itertools.count(1)

    def append(
        self, topic: str, payload: bytes, qos: int, retain: bool, durable: bool = False
    ) -> ThreadFuture[Any] | None:
        if len(self._items) >= self.max_items:
            self.dropped += 1
            if self.overflow == "drop_new" or not self._items:
                return None
            self._items.popleft()
        self._items.append((next(self._ids), topic, payload, qos, retain))
        return None

    def peek(self, n: int) -> list[SpoolItem]:
        return list(itertools.islice(self._items, n))

    def remove_upto(self, id_: int) -> None:
        items = self._items
        while items and items[0][0] <= id_:
            items.popleft()

    def __len__(self) -> int:
        return len(self._items)


# ---------------------------------------------------------------------------------------
# Public value types
# ---------------------------------------------------------------------------------------
class Incoming(msgspec.Struct, gc=False):
    """One received message, as handed to subscription handlers.

    A msgspec Struct rather than a dataclass: it is built once per message on the hot
    path, and its constructor runs in C (a dataclass's ``__init__`` is one more Python
    frame, which costs microseconds when each message arrives to cold caches)."""

    topic: str
    payload: bytes
    qos: int
    retain: bool
    #: the broker says this may be a redelivery (QoS 1/2 DUP flag)
    dup: bool = False


@dataclass(eq=False, slots=True)
class Subscription:
    """Handle returned by ``MqttConnection.subscribe``; pass it to ``unsubscribe``."""

    topic_filter: str
    qos: int
    handler: Handler
    #: the filter without its ``$share/<group>/`` prefix, used to route messages
    match_filter: str = ""


def _strip_share(topic_filter: str) -> str:
    if topic_filter.startswith("$share/"):
        parts = topic_filter.split("/", 2)
        return parts[2] if len(parts) == 3 else ""
    return topic_filter


def check_filter(topic_filter: str) -> str:
    """The routing filter of a valid topic filter; ValueError names what is wrong."""
    if topic_filter.startswith("$share/"):
        parts = topic_filter.split("/", 2)
        if len(parts) != 3 or not parts[1] or "+" in parts[1] or "#" in parts[1]:
            raise ValueError(f"bad shared subscription {topic_filter!r}: $share/<group>/<filter>")
    inner = _strip_share(topic_filter)
    if not inner or "\0" in inner:
        raise ValueError(f"empty or invalid topic filter {topic_filter!r}")
    levels = inner.split("/")
    for i, level in enumerate(levels):
        if "#" in level and (level != "#" or i != len(levels) - 1):
            raise ValueError(f"bad topic filter {topic_filter!r}: '#' must be a whole last level")
        if "+" in level and level != "+":
            raise ValueError(f"bad topic filter {topic_filter!r}: '+' must be a whole level")
    return inner


def _own(payload: bytes) -> bytes:
    """A copy sized to its content, for payloads the driver keeps (in flight, spooled):
    orjson's output holds ~4 KB whatever its length, 400 MB for a full default spool."""
    return memoryview(payload).tobytes()


def _check_topic(topic: str) -> None:
    if not topic or "+" in topic or "#" in topic or "\0" in topic:
        raise ValueError(f"bad topic to publish {topic!r}: empty or has a wildcard")
    if len(topic.encode("utf-8", "replace")) > 0xFFFF:
        raise ValueError(f"topic to publish too long ({topic[:40]!r}...): over 65535 bytes")


def topic_matches(topic_filter: str, topic: str) -> bool:
    """MQTT matching: ``+`` one level, ``#`` this level and below; ``$`` topics skip wildcards."""
    flt = _strip_share(topic_filter).split("/")
    parts = topic.split("/")
    if topic.startswith("$") and flt[0] in ("+", "#"):
        return False
    for i, level in enumerate(flt):
        if level == "#":
            return True
        if i >= len(parts) or (level != "+" and level != parts[i]):
            return False
    return len(flt) == len(parts)


# ---------------------------------------------------------------------------------------
# Internal bookkeeping
# ---------------------------------------------------------------------------------------
@dataclass(eq=False, slots=True)
class _Out:
    """A QoS>=1 publish sent on the current session, waiting for its ack (in send order)."""

    topic: str
    payload: bytes
    qos: int
    retain: bool
    spool_id: int | None = None  # set when it came from the spool (removed once acked)
    requeue: bool = True  # False for the birth message: stale on a later session
    done: bool = False
    #: resolved once the broker has acknowledged it (``publish(confirm=True)``)
    confirmed: asyncio.Future[None] | None = None


def _resolve(fut: asyncio.Future[None] | None) -> None:
    if fut is not None and not fut.done():
        fut.set_result(None)


def _settle_after(fut: asyncio.Future[None], done: asyncio.Future[Any]) -> None:
    """``done`` (a store write) finished: resolve ``fut`` if it succeeded, else cancel it."""
    if not done.cancelled() and done.exception() is None:
        _resolve(fut)
    else:
        fut.cancel()


class _Refused(MechawayError):
    """CONNACK refused (library error re-raised); ``auth`` for bad credentials/not authorised."""

    def __init__(self, code: int | None, text: str) -> None:
        super().__init__(text)
        self.code = code
        self.auth = code in _AUTH_CODES


class _SessionLost(MechawayError):
    """The socket closed before the broker accepted the connection."""


class _Violation(MechawayError):
    """The broker broke MQTT before accepting the connection (wrong or malformed packet)."""


_COUNTERS = (
    "rx",  # messages handed to handlers
    "tx",  # publishes written to the socket (QoS 0 and >=1, spool drains and resends included)
    "acked",  # QoS>=1 publishes acknowledged by the broker
    "spooled",  # publishes put in the spool (offline, or ordering behind the spool)
    "spool_dropped",  # shed by the spool bound (spool_overflow policy)
    "resent",  # QoS>=1 publishes sent again after a connection loss
    "oversize_dropped",  # incoming payloads over max_payload_bytes
    "tx_oversize_dropped",  # outgoing payloads over max_payload_bytes
    "qos0_dropped_offline",  # QoS 0 published while offline with offline_qos0="drop"
    "qos0_dropped_backpressure",  # QoS 0 while the socket buffer is over its cap
    "rx_dropped_overload",  # QoS 0 in while _MAX_PENDING_HANDLERS async handlers were pending
    "unrouted",  # messages that matched no subscription (e.g. just unsubscribed)
    "handler_errors",  # handlers that raised
    "subscribe_refused",  # SUBACK failure codes
    "connect_failures",  # attempts that did not end connected
    "auth_failures",  # attempts refused for credentials/authorisation
    "broker_disconnects",  # connections the broker ended (DISCONNECT or closing the socket)
    "session_taken_over",  # ... because another client connected with our client id
    "protocol_errors",  # sessions ended because the broker broke MQTT (bad packet, type, id)
    "unexpected_acks",  # PUBACK/PUBREC/PUBCOMP/SUBACK for a packet id not in flight (ignored)
    "keepalive_timeouts",  # sessions ended: nothing from (or read by) the broker in 2 keepalives
    "redeliveries_requested",  # sessions ended so the broker redelivers what the store refused
    "acked_unstored",  # QoS>0 messages acknowledged though the store refused them (clean session)
)

#: broker faults that end the session (``_GmqttSession.fault``)
_SESSION_ENDING = frozenset({"protocol_errors", "keepalive_timeouts"})

#: packet types by their first byte's high nibble, for reports
_PACKET_NAMES = {
    0x00: "reserved (0)",
    0x10: "CONNECT",
    0x20: "CONNACK",
    0x30: "PUBLISH",
    0x40: "PUBACK",
    0x50: "PUBREC",
    0x60: "PUBREL",
    0x70: "PUBCOMP",
    0x80: "SUBSCRIBE",
    0x90: "SUBACK",
    0xA0: "UNSUBSCRIBE",
    0xB0: "UNSUBACK",
    0xC0: "PINGREQ",
    0xD0: "PINGRESP",
    0xE0: "DISCONNECT",
    0xF0: "AUTH",
}


def _ignore(cmd: int, packet: bytes) -> None:
    """A packet handler that drops what a dead session still reads."""


def _bad_topic(topic: str) -> bool:
    """A topic no broker may send: wildcards or NUL (empty ones never get this far)."""
    return "+" in topic or "#" in topic or "\0" in topic


#: MQTT 5 DISCONNECT reason codes a broker sends, in words
_DISCONNECT_REASONS = {
    0x00: "normal disconnection",
    0x80: "unspecified error",
    0x81: "malformed packet",
    0x82: "protocol error",
    0x83: "implementation specific error",
    0x87: "not authorized",
    0x89: "server busy",
    0x8B: "server shutting down",
    0x8D: "keep alive timeout",
    0x8E: "session taken over",
    0x93: "receive maximum exceeded",
    0x94: "topic alias invalid",
    0x95: "packet too large",
    0x97: "quota exceeded",
    0x98: "administrative action",
    0x9C: "use another server",
    0x9D: "server moved",
    0x9F: "connection rate exceeded",
}
_TAKEN_OVER = 0x8E


class _DemotedLog:
    """The library's log lines, all at DEBUG: the driver reports conditions once per burst.

    On gmqtt's own paths (not the fast ones) it calls ``debug`` per packet: one cached
    level check, nothing more.
    """

    def __init__(self, logger: logging.Logger) -> None:
        self.logger = logger

    def debug(self, msg: object, *args: Any, **kwargs: Any) -> None:
        if self.logger.isEnabledFor(logging.DEBUG):
            kwargs.pop("exc_info", None)
            self.logger.debug(msg, *args, **kwargs)

    info = warning = error = critical = exception = debug

    def log(self, level: int, msg: object, *args: Any, **kwargs: Any) -> None:
        self.debug(msg, *args, **kwargs)


# ---------------------------------------------------------------------------------------
# The library seam: everything gmqtt-specific lives below, up to MqttConnection
# ---------------------------------------------------------------------------------------
#: a publish larger than this is refused (MQTT's remaining length tops out at 256 MB)
_MAX_PACKET = 268_435_455
#: corked writes are flushed at once when this many bytes wait (else once per loop pass)
_CORK_BYTES = 64 * 1024


def _fixed_header(first: int, size: int) -> bytes:
    """An MQTT fixed header: the first byte and ``size`` as a variable byte integer."""
    if size < 0x80:
        return bytes((first, size))
    if size < 0x4000:
        return bytes((first, size & 0x7F | 0x80, size >> 7))
    if size > _MAX_PACKET:
        raise ValueError(f"MQTT packet of {size} bytes: over 256 MB")
    out = bytearray((first,))
    while size:
        size, byte = divmod(size, 0x80)
        out.append(byte | 0x80 if size else byte)
    return bytes(out)


@functools.cache
def _gmqtt() -> tuple[Any, Any, Any, Any]:
    """Import gmqtt once, lazily; returns (ClientClass, StorageClass, Message, Subscription).

    Three targeted overrides of gmqtt 0.8 internals (checked here, so an upgrade that
    moves them fails at start-up, not on the wire):

    - the protocol reads in ``data_received`` instead of a reader task: no task wake-up
      per read, and PUBLISH packets of the usual shape (no topic alias, no property but
      subscription identifiers) are decoded straight into ``Incoming`` without gmqtt's
      per-message packet object, property dictionary and coroutine check; any other
      packet, and any PUBLISH the fast path does not take, goes through gmqtt unchanged;
    - writes are corked: the session's PUBLISH and acknowledgement packets are gathered
      and written with one ``transport.write`` after the read that caused them, or at the
      next loop pass (``call_soon``); gmqtt's own packets (CONNECT, SUBSCRIBE, PUBREL,
      DISCONNECT, ...) flush what is corked first, so the order on the wire is the order
      of the calls;
    - the session builds its PUBLISH packets itself (gmqtt's packet-id allocator and
      in-flight store still see every QoS>=1 one, so its PUBACK/PUBREC/PUBCOMP handling
      is unchanged).

    And for a broker that breaks MQTT: the session fills gmqtt's per-type handler cache
    (no cost per packet) so that only CONNACK is taken before CONNACK, and only what a
    server may send after it (``_GmqttSession._arm``); a packet declared far over
    ``max_payload_bytes`` is skipped unread or ends the session (``Protocol._oversize``);
    the keepalive aborts a silent link instead of waiting for its unsent data to drain.
    """
    try:
        import gmqtt
        from gmqtt.mqtt.connection import MQTTConnection
        from gmqtt.mqtt.constants import MQTTv50
        from gmqtt.mqtt.handler import MqttPackageHandler
        from gmqtt.mqtt.package import Package
        from gmqtt.mqtt.protocol import BaseMQTTProtocol, MQTTProtocol
        from gmqtt.storage import PersistentStorage
    except ImportError as err:  # pragma: no cover - gmqtt is a core dependency
        raise ConfigError("the MQTT driver needs gmqtt: pip install gmqtt") from err
    for owner, name in (
        (MqttPackageHandler, "_handle_qos_1_publish_packet"),
        (MqttPackageHandler, "_handle_qos_2_publish_packet"),
        (MqttPackageHandler, "_handle_publish_packet"),
        (MQTTProtocol, "write_data"),
        (MQTTProtocol, "_read_packet"),
        (MQTTConnection, "put_package"),
        (MQTTConnection, "_keep_connection"),
        (MqttPackageHandler, "_handle_connack_packet"),
        (MqttPackageHandler, "_handle_suback_packet"),
        (MqttPackageHandler, "_parse_properties"),
        (gmqtt.Client, "_create_connection"),
        (gmqtt.Client, "_exit_reconnecting_state"),
    ):
        if not hasattr(owner, name):  # pragma: no cover - guards an upgrade
            raise ConfigError(f"unsupported gmqtt {gmqtt.__version__}: no {owner.__name__}.{name}")

    monotonic = time.monotonic

    class Protocol(MQTTProtocol):  # type: ignore[misc]
        """gmqtt's protocol, read in ``data_received`` and written corked (see above)."""

        def __init__(self, *args: Any, deliver: Callable[..., None] | None, **kwargs: Any):
            super().__init__(*args, **kwargs)
            #: ``deliver(Incoming, mid, sub_ids)`` for fast-path PUBLISH packets
            self.deliver = deliver
            #: the start of a packet not yet complete (a bytearray while ``_need`` is set)
            self._rx: bytes | bytearray = b""
            #: corked writes, in call order; a copy, so the packets' objects are freed now
            #: (orjson's output holds ~4 KB whatever its length: a batch of them is MBs)
            self.out = bytearray()
            self._reading = False  # in data_received: it flushes when done
            self._flush_due = False  # a call_soon flush is scheduled
            self._wloop: asyncio.AbstractEventLoop | None = None
            self.v5 = True
            self._failed_once = False
            #: a packet declared larger than this is not gathered (see ``_oversize``)
            self.max_packet = _MAX_PACKET
            #: ``bad(what)``: the broker broke MQTT (the session counts it and aborts)
            self.bad: Callable[[str], None] | None = None
            #: ``dropped(qos, mid)``: an oversize PUBLISH was skipped (mid None: not known)
            self.dropped: Callable[[int, int | None], None] | None = None
            self._need = 0  # the size of the large packet gathered in ``_rx`` (a bytearray)
            self.written = 0  # bytes given to the transport (what it sent: minus its buffer)
            self._skip = 0  # bytes of an oversize PUBLISH still to be discarded
            self._skipped: tuple[int, int | None] = (0, None)  # its (qos, mid)

        def connection_made(self, transport: asyncio.BaseTransport) -> None:
            # gmqtt's MQTTProtocol starts a reader task here; data_received replaces it
            BaseMQTTProtocol.connection_made(self, transport)
            self._wloop = asyncio.get_running_loop()
            self.v5 = self._connection_state.protocol_version >= MQTTv50

        def eof_received(self) -> bool:
            return False  # close on the broker's FIN (gmqtt's reader task did that)

        # -- writing ----------------------------------------------------------------
        def cork(self, data: bytes) -> None:
            out = self.out
            out += data
            if len(out) >= _CORK_BYTES:
                self.flush()
            elif not self._flush_due and not self._reading and self._wloop is not None:
                self._flush_due = True
                self._wloop.call_soon(self.flush)

        def flush(self) -> None:
            self._flush_due = False
            data = self.out
            if not data:
                return
            self.out = bytearray()  # the transport may keep ``data``: never reused
            transport = self._transport
            if transport is not None and not transport.is_closing():
                if self._connection is not None:
                    self._connection._last_data_out = monotonic()
                self.written += len(data)
                transport.write(data)

        def write_data(self, data: bytes) -> None:
            """gmqtt's own packets: after everything corked before them."""
            if self.out:
                self.flush()
            self.written += len(data)
            super().write_data(data)

        # -- reading ----------------------------------------------------------------
        def data_received(self, data: bytes) -> None:
            """Frame every complete packet of this read; PUBLISH goes to ``_publish``.

            The framing loop is inline (it was a method of its own): at a few hundred
            messages a second each message arrives to cold caches, where every Python
            call on its path costs a microsecond or two."""
            conn = self._connection
            # (``_connection`` is what gmqtt's ``current_connection`` property returns)
            if conn is None or conn._handler._connection is not conn:
                return  # superseded (gmqtt drops those too); the broker speaks after CONNECT
            conn._last_data_in = monotonic()
            if self._skip:
                data = self._skipping(data)
            rx = self._rx
            if not rx:
                buf = data
            elif self._need:  # a large packet: gathered in place, not copied at each read
                rx += data
                if len(rx) < self._need:
                    return
                self._need = 0
                buf = bytes(rx)
            else:  # bytes here (a bytearray only while _need is set)
                buf = rx + data  # type: ignore[assignment]
            pos, end, need = 0, len(buf), 0
            self._reading = True
            try:
                while end - pos >= 2:
                    first = buf[pos]
                    size = buf[pos + 1]
                    i = pos + 2
                    if size & 0x80:
                        size &= 0x7F
                        shift = 7
                        while i < end:
                            byte = buf[i]
                            i += 1
                            size |= (byte & 0x7F) << shift
                            if not byte & 0x80:
                                break
                            shift += 7
                            if shift > 21:
                                break
                        else:
                            break  # the length itself is cut: wait for the rest
                        if shift > 21:
                            pos = -1  # a length of more than four bytes
                            break
                    stop = i + size
                    if stop > end:
                        if size > self.max_packet:
                            pos = self._oversize(first, buf, i, stop, end)
                        else:
                            need = stop - pos
                        break
                    if first & 0xF0 != 0x30 or not self._publish(first, buf, i, stop):
                        conn.put_package(Package(first, buf[i:stop]))
                    pos = stop
            finally:
                self._reading = False
                if self.out:
                    self.flush()
            if pos < 0:
                self._rx = b""
                if self._transport is not None:
                    self._transport.abort()  # malformed framing: nothing after it can be read
                return
            if pos >= end:
                self._rx = b""
            elif need > _CORK_BYTES:
                self._rx = bytearray(buf[pos:])
                self._need = need
            else:
                self._rx = buf[pos:]

        def _oversize(self, first: int, buf: bytes, i: int, stop: int, end: int) -> int:
            """A packet declared over ``max_packet``, ``buf[i:end]`` its start: a PUBLISH is
            skipped as it arrives (its qos and id read from that start when they are in
            it), anything else is a broken broker. Where the framing goes on (``end``), or
            -1: abort."""
            if first & 0xF0 != 0x30:
                if self.bad is None:
                    return -1
                name = _PACKET_NAMES[first & 0xF0]
                self.bad(f"{name} of {stop - i} bytes (over {self.max_packet})")
                return end
            qos = first >> 1 & 3
            mid = None
            if qos and end - i >= 2:
                at = i + 2 + (buf[i] << 8 | buf[i + 1])
                if at + 2 <= end:
                    mid = buf[at] << 8 | buf[at + 1]
            self._skip = stop - end
            self._skipped = (qos, mid or None)
            return end

        def _skipping(self, data: bytes) -> bytes:
            """Discard the rest of an oversize PUBLISH; what follows it in ``data``."""
            n = self._skip
            if len(data) < n:
                self._skip = n - len(data)
                return b""
            self._skip = 0
            if self.dropped is not None:
                self.dropped(*self._skipped)
            return data[n:]

        def _publish(self, first: int, buf: bytes, i: int, stop: int) -> bool:
            """Decode and deliver one PUBLISH (``buf[i:stop]`` is its body); False leaves it
            to gmqtt: a topic alias, properties other than subscription identifiers,
            anything malformed. Never reads past ``stop``."""
            deliver = self.deliver
            if deliver is None or stop - i < 3:
                return False
            p = tend = i + 2 + (buf[i] << 8 | buf[i + 1])
            if tend == i + 2 or tend > stop:  # empty topic (a topic alias), or overrun
                return False
            qos = first >> 1 & 3
            mid = None
            if qos:
                if qos == 3 or p + 2 > stop:
                    return False
                mid = buf[p] << 8 | buf[p + 1]
                if not mid:  # a protocol error: gmqtt's path reports it
                    return False
                p += 2
            sub_ids: list[int] | None = None
            if self.v5:
                if p >= stop:
                    return False
                plen = buf[p]
                p += 1
                if plen:
                    if plen & 0x80 or p + plen > stop:
                        return False
                    q, p = p, p + plen
                    sub_ids = []
                    while q < p:  # subscription identifiers only (0x0B, a variable int)
                        if buf[q] != 0x0B:
                            return False
                        q += 1
                        value = shift = 0
                        while True:
                            if q >= p or shift > 21:
                                return False
                            byte = buf[q]
                            q += 1
                            value |= (byte & 0x7F) << shift
                            if byte < 0x80:
                                break
                            shift += 7
                        sub_ids.append(value)
            try:
                topic = buf[i + 2 : tend].decode()
            except UnicodeDecodeError:
                return False
            try:
                deliver(
                    Incoming(topic, buf[p:stop], qos, bool(first & 1), bool(first & 8)),
                    mid,
                    sub_ids,
                )
            except Exception:  # handlers' errors are counted before this: a driver bug
                if not self._failed_once:
                    self._failed_once = True
                    log.exception("handling an incoming message failed (logged once)")
            return True

    class Connection(MQTTConnection):  # type: ignore[misc]
        """gmqtt's connection, whose keepalive aborts a silent link, and one the broker
        stopped reading (it may go on sending: the acks we owe it pile up unsent).

        gmqtt's closes it gracefully, and a graceful close waits for the write buffer to
        drain: with a broker that reads nothing it never ends, and the session never
        learns it is lost."""

        #: ``silent(what)``: nothing came from the broker, or nothing it read, in two
        #: keepalives
        silent: Callable[[str], None] | None = None
        _sent = 0  # bytes the transport had sent at ``_sent_at``
        _sent_at = 0.0

        def _keep_connection(self) -> None:
            ka = self._keepalive
            if ka and self.silent is not None and not self.is_closing():
                now = monotonic()
                if now - self._last_data_in >= 2 * ka:
                    self.silent(f"nothing from the broker in {2 * ka} s (keepalive {ka} s)")
                    return
                unsent = self._transport.get_write_buffer_size()
                sent = self._protocol.written - unsent
                if not unsent or sent != self._sent or not self._sent_at:
                    self._sent, self._sent_at = sent, now
                elif now - self._sent_at >= 2 * ka:
                    self.silent(
                        f"the broker read nothing in {2 * ka} s (keepalive {ka} s; "
                        f"{unsent} bytes waiting)"
                    )
                    return
            super()._keep_connection()

    class Client(gmqtt.Client):  # type: ignore[misc]
        #: the protocol it connects with (the tests drive its parser without a socket)
        protocol_class = Protocol
        #: set by the session before connecting: where fast-path messages go
        deliver: Callable[..., None] | None = None
        #: set by the session: told (transport, protocol) before CONNECT goes out
        on_wired: Callable[[Any, Any], None] | None = None
        #: set by the session: the link was silent for two keepalives
        on_silent: Callable[[str], None] | None = None

        async def reconnect(self, delay: bool = False) -> None:
            """The driver owns reconnection (jittered backoff, a fresh client per attempt)."""
            return None

        async def _create_connection(
            self, host: str, port: int, ssl: Any, clean_session: bool, keepalive: int
        ) -> Any:
            """gmqtt's, with ``Protocol`` in place of its own."""
            self._exit_reconnecting_state()
            handler = self._package_handler
            handler.clear_topics_aliases()
            self._connack_received.clear()
            self._connection_lost.clear()
            factory = functools.partial(
                Protocol,
                connection_state=self._connection_state,
                id_generator=handler.id_generator,
                deliver=None,  # set by the session once the broker accepted the connection
            )
            loop = asyncio.get_running_loop()
            transport, protocol = await loop.create_connection(factory, host, port, ssl=ssl)
            if self.on_wired is not None:
                self.on_wired(transport, protocol)
            conn = Connection(
                transport,
                protocol,
                clean_session,
                keepalive,
                package_handler=handler,
                logger=self._logger,
            )
            conn.silent = self.on_silent
            return conn

    class Storage(PersistentStorage):  # type: ignore[misc]
        """gmqtt's in-flight store, used as the hook that reports acks."""

        def __init__(self, on_ack: Callable[[int], None]) -> None:
            super().__init__()
            self.on_ack = on_ack

        def remove_message_by_mid(self, mid: int) -> None:  # PUBACK, PUBCOMP, refused PUBREC
            super().remove_message_by_mid(mid)
            self.on_ack(mid)

    return Client, Storage, gmqtt.Message, gmqtt.Subscription


class _Owner(Protocol):
    """What a session reports to its connection."""

    def _on_message(
        self, session: _GmqttSession, msg: Incoming, mid: int | None, sub_ids: list[int] | None
    ) -> None: ...

    def _on_ack(self, session: _GmqttSession, mid: int) -> None: ...

    def _on_suback(self, session: _GmqttSession, mid: int, codes: tuple[int, ...]) -> None: ...

    def _on_lost(self, session: _GmqttSession, reason: str) -> None: ...

    def _on_broker_disconnect(self, code: int | None) -> None: ...

    def _on_broker_fault(self, session: _GmqttSession, counter: str, what: str) -> None: ...

    def _on_dropped_publish(self, session: _GmqttSession, qos: int, mid: int | None) -> None: ...


class _GmqttSession:
    """One connection attempt and, if it succeeds, its life until the socket closes.

    A fresh gmqtt client per attempt keeps state from leaking between connections (packet
    ids, in-flight store, a refused CONNACK) and keeps gmqtt's own reconnect out of the way.
    """

    def __init__(
        self,
        owner: _Owner,
        *,
        label: str,
        settings: MqttSettings,
        client_id: str,
        will: tuple[str, bytes] | None,
        ssl_ctx: ssl.SSLContext | None,
        lib_log: _DemotedLog,
    ) -> None:
        client_cls, storage_cls, message_cls, sub_cls = _gmqtt()
        self._owner = owner
        self.label = label
        self._settings = settings
        self._sub_cls = sub_cls
        self._ssl = ssl_ctx
        self.lost = asyncio.Event()
        self.lost_reason = ""
        self.disconnect_code: int | None = None  # the broker's DISCONNECT reason, if it gave one
        self.receive_maximum: int | None = None
        #: MQTT 5 subscription identifiers: a message says which subscription it is for
        self.sub_ids = settings.protocol == "5"
        self.pending_acks: deque[list[Any]] = deque()  # [qos, mid, done] in arrival order
        props: dict[str, Any] = {}
        if settings.protocol == "5" and not settings.clean_session:
            props["session_expiry_interval"] = settings.session_expiry
        will_msg = None
        if will is not None:
            will_msg = message_cls(will[0], will[1], qos=1, retain=True)
        self._storage = storage_cls(functools.partial(owner._on_ack, self))
        self._client = client_cls(
            client_id,
            clean_session=settings.clean_session,
            optimistic_acknowledgement=False,
            will_message=will_msg,
            persistent_storage=self._storage,
            logger=lib_log,
            **props,
        )
        if settings.username is not None:
            self._client.set_auth_credentials(settings.username, settings.password)
        client = self._client
        client.on_message = self._on_qos0
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_subscribe = self._on_subscribe
        # gmqtt acks QoS 1/2 optimistically or only for coroutine handlers; we ack after
        # our (sync or async) handlers ran, in arrival order (MQTT 4.6): take over both.
        handler = client._package_handler
        handler._handle_qos_1_publish_packet = functools.partial(self._on_acked_publish, 1)
        handler._handle_qos_2_publish_packet = functools.partial(self._on_acked_publish, 2)
        self._handler = handler
        client.deliver = functools.partial(owner._on_message, self)
        client.on_wired = self._on_wired
        client.on_silent = self._on_silent
        #: the broker's CONNACK accepted the connection: from then on messages are taken
        self.accepted = False
        self.violation: str | None = None  # how the broker broke MQTT, if it did
        self.fault: str | None = None  # the counter of the broker fault that ended it
        self._sub_mids: set[int] = set()  # SUBSCRIBEs awaiting their SUBACK
        self._suback_codes: tuple[int, ...] | None = None
        self._delivered = False  # set by the callbacks of gmqtt's PUBLISH path
        self._gm = {  # gmqtt's handlers of the packets it may see on an accepted session
            t: getattr(handler, f"_handle_{_PACKET_NAMES[t].lower()}_packet")
            for t in (0x20, 0x30, 0x40, 0x50, 0x60, 0x70, 0x90, 0xB0, 0xD0, 0xE0)
        }
        self._arm()
        self._v5 = settings.protocol == "5"
        self._ids = handler.id_generator
        #: topic -> (length-prefixed topic, the same + QoS 0's property block)
        self._topics: dict[str, tuple[bytes, bytes]] = {}
        self._transport: Any = None  # asyncio or uvloop TCP transport, once connected
        self._proto: Any = None  # the Protocol of _gmqtt(), once connected

    # -- what the broker may send, when -------------------------------------------------
    def _arm(self) -> None:
        """Route each packet type through gmqtt's handler cache (looked up per packet
        anyway, so this costs nothing per message): before CONNACK only CONNACK (and the
        stand-in DISCONNECT of a closed socket) is taken; afterwards what a server may
        send, with the PUBLISH gmqtt decodes and SUBACK checked; anything else (CONNECT,
        SUBSCRIBE, a second CONNACK, ...) is a broken broker."""
        cache: dict[int, Any] = self._handler._handler_cache
        cache.clear()
        for t in _PACKET_NAMES:
            cache[t] = self._unexpected
        cache[0xE0] = self._gm[0xE0]
        if not self.accepted:
            cache[0x20] = self._on_connack_packet
            return
        for t in (0x40, 0x60, 0x70, 0xB0, 0xD0):
            cache[t] = self._gm[t]
        cache[0x30] = self._on_publish_packet
        cache[0x50] = self._on_pubrec_packet
        cache[0x90] = self._on_suback_packet

    def _disarm(self) -> None:
        """Take nothing more from this socket: the rest of the read that ended it (a
        transport delivers nothing after an abort, but the read in hand goes on)."""
        if self._proto is not None:
            self._proto.deliver = None
        cache: dict[int, Any] = self._handler._handler_cache
        for t in _PACKET_NAMES:
            cache[t] = _ignore
        cache[0xE0] = self._gm[0xE0]

    def protocol_error(self, what: str) -> None:
        """The broker broke MQTT: counted, and the session ends (it is retried)."""
        if self.lost.is_set():
            return
        self.violation = what
        self.fault = "protocol_errors"
        self._owner._on_broker_fault(self, "protocol_errors", f"broker violated MQTT: {what}")
        self.abort(f"broker violated MQTT: {what}")

    def _unexpected(self, cmd: int, packet: bytes) -> None:
        where = "" if self.accepted else " before CONNACK"
        self.protocol_error(f"unexpected {_PACKET_NAMES[cmd & 0xF0]} packet{where}")

    def _on_connack_packet(self, cmd: int, packet: bytes) -> None:
        if len(packet) < 2 or packet[0] > 1 or (self._v5 and packet[1] == 0 and len(packet) < 3):
            self.protocol_error(f"malformed CONNACK {bytes(packet[:16])!r}")
            return
        handler = self._handler
        if self._v5 and packet[1] == 1:  # a 3.1.1 broker's "unacceptable protocol version"
            # gmqtt would retry as 3.1.1 through the reconnect the driver disables
            from gmqtt.mqtt.handler import MQTTConnectError

            handler._error = MQTTConnectError(1)
            handler._connack_received.set()
            return
        if packet[1] == 0 and self._v5:
            try:
                props, _ = handler._parse_properties(packet[2:])
            except Exception:
                props = None
            if props is None:
                self.protocol_error("CONNACK with malformed properties")
                return
        self._gm[0x20](cmd, packet)
        if packet[1] == 0 and not handler.has_error:
            self.accepted = True
            self._arm()
            if self._proto is not None:
                self._proto.deliver = self._client.deliver

    def _on_publish_packet(self, cmd: int, packet: bytes) -> None:
        """A PUBLISH the fast path left to gmqtt: what gmqtt drops silently (malformed,
        an unknown topic alias) ends the session, counted."""
        self._delivered = False
        try:
            self._gm[0x30](cmd, packet)
        except Exception as err:
            self.protocol_error(f"malformed PUBLISH ({err})")
            return
        if not self._delivered:
            self.protocol_error("malformed PUBLISH, or a topic alias never set")

    def _on_pubrec_packet(self, cmd: int, packet: bytes) -> None:
        mid = packet[0] << 8 | packet[1] if len(packet) >= 2 else 0
        if mid not in self._storage._messages:  # gmqtt would answer with a PUBREL
            self._owner._on_broker_fault(self, "unexpected_acks", f"PUBREC for packet id {mid}")
            return
        self._gm[0x50](cmd, packet)

    def _on_suback_packet(self, cmd: int, packet: bytes) -> None:
        mid = packet[0] << 8 | packet[1] if len(packet) >= 2 else 0
        if mid not in self._sub_mids:  # gmqtt would free that id: maybe a PUBLISH's
            self._owner._on_broker_fault(self, "unexpected_acks", f"SUBACK for packet id {mid}")
            return
        self._sub_mids.discard(mid)
        self._suback_codes = None
        try:
            self._gm[0x90](cmd, packet)
        except Exception:
            self._suback_codes = None
        codes = self._suback_codes
        if codes is None:
            self.protocol_error("malformed SUBACK")
        elif len(codes) != 1:  # one filter per SUBSCRIBE
            self.protocol_error(f"SUBACK with {len(codes)} reason codes for 1 topic filter")
        else:
            self._owner._on_suback(self, mid, codes)

    def _bad_incoming(self, topic: Any, mid: int | None, props: Mapping[str, Any]) -> bool:
        """A PUBLISH from gmqtt's path that no broker may send (ended, counted)."""
        self._delivered = True
        if not isinstance(topic, str):
            self.protocol_error(f"PUBLISH topic is not UTF-8: {bytes(topic[:40])!r}")
        elif mid == 0:
            self.protocol_error("QoS>0 PUBLISH with packet id 0")
        elif "topic_alias" in props and (
            not props["topic_alias"][0] or len(self._handler._server_topics_aliases) > _MAX_ALIASES
        ):
            self.protocol_error("topic aliases the client never allowed")
        else:
            return False
        return True

    # -- gmqtt callbacks --------------------------------------------------------------
    def _on_wired(self, transport: Any, protocol: Any) -> None:
        """The socket is open and CONNECT not yet sent: messages (and their acks) can
        come in the same read as CONNACK, before ``connect()`` returns."""
        self._transport = transport
        self._proto = protocol
        self._v5 = protocol.v5  # gmqtt may have fallen back to 3.1.1
        protocol.max_packet = self._settings.max_payload_bytes + _PACKET_SLACK
        protocol.bad = self.protocol_error
        protocol.dropped = functools.partial(self._owner._on_dropped_publish, self)

    def _on_silent(self, what: str) -> None:
        if not self.lost.is_set():
            self.fault = "keepalive_timeouts"
            self._owner._on_broker_fault(self, "keepalive_timeouts", what)
            self.abort(what)

    def _on_qos0(self, client: Any, topic: str, payload: bytes, qos: int, props: Any) -> int:
        if self._bad_incoming(topic, None, props):
            return 0
        self._owner._on_message(
            self,
            Incoming(topic, payload, qos, bool(props["retain"])),
            None,
            props.get("subscription_identifier"),
        )
        return 0

    def _on_acked_publish(
        self, qos: int, mid: int, payload: bytes, topic: str, props: dict[str, Any]
    ) -> None:
        if self._bad_incoming(topic, mid, props):
            return
        self._owner._on_message(
            self,
            Incoming(topic, payload, qos, bool(props["retain"]), bool(props.get("dup"))),
            mid,
            props.get("subscription_identifier"),
        )

    def _on_connect(self, client: Any, flags: Any, rc: Any, props: dict[str, Any]) -> None:
        value = props.get("receive_maximum")
        if isinstance(value, list) and value:
            self.receive_maximum = int(value[0])
        available = props.get("sub_id_available")
        if isinstance(available, list) and available and not available[0]:
            self.sub_ids = False

    def _on_subscribe(self, client: Any, mid: int, codes: tuple[int, ...], props: Any) -> None:
        self._suback_codes = tuple(codes)  # checked by _on_suback_packet

    def _on_disconnect(self, client: Any, packet: Any, exc: Any = None) -> None:
        """The broker's DISCONNECT (MQTT 5: a reason code first), or gmqtt's empty stand-in
        for a socket the broker closed."""
        if self.lost.is_set():
            return
        code = packet[0] if isinstance(packet, bytes | bytearray) and packet else None
        if code is None:
            self.lost_reason = "broker closed the connection"
        else:
            what = _DISCONNECT_REASONS.get(code, "reason not known")
            self.lost_reason = f"broker disconnected the client: {what} (0x{code:02X})"
        self.disconnect_code = code
        self._owner._on_broker_disconnect(code)
        self.lost.set()
        self._owner._on_lost(self, self.lost_reason)

    # -- what the connection uses -------------------------------------------------------
    async def connect(self) -> None:
        """Connect and wait for CONNACK; _Refused, _SessionLost, OSError or TimeoutError."""
        from gmqtt.mqtt.constants import MQTTv50, MQTTv311
        from gmqtt.mqtt.handler import MQTTConnectError

        s = self._settings
        attempt = asyncio.create_task(
            self._client.connect(
                s.host,
                s.port,
                ssl=self._ssl or False,
                keepalive=s.keepalive,
                version=MQTTv50 if s.protocol == "5" else MQTTv311,
                raise_exc=True,
            ),
            name=f"{self.label}.connect",
        )
        lost = asyncio.create_task(self.lost.wait(), name=f"{self.label}.connect.lost")
        try:
            done, _ = await asyncio.wait(
                {attempt, lost}, timeout=s.connect_timeout, return_when=asyncio.FIRST_COMPLETED
            )
            if attempt in done:
                try:
                    attempt.result()
                except MQTTConnectError as err:
                    raise _Refused(getattr(err, "_code", None), f"refused: {err}") from err
            elif lost in done:
                if self.violation is not None:
                    raise _Violation(self.violation)
                raise _SessionLost(self.lost_reason or "connection closed before CONNACK")
            else:
                raise TimeoutError(f"no CONNACK within {s.connect_timeout:g} s")
        finally:
            for fut in (attempt, lost):
                if not fut.done():
                    fut.cancel()
                    with contextlib.suppress(BaseException):
                        await fut
        if self.lost.is_set():
            raise _SessionLost("connection closed right after CONNACK")
        sock = self._transport.get_extra_info("socket") if self._transport else None
        if sock is not None:
            # asyncio and uvloop already set it on TCP transports; make it explicit.
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def nodelay(self) -> bool:
        sock = self._transport.get_extra_info("socket") if self._transport else None
        return bool(sock is not None and sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY))

    def _encoded_topic(self, topic: str) -> tuple[bytes, bytes]:
        """(length-prefixed topic, the same + QoS 0's empty property block), cached."""
        enc = self._topics.get(topic)
        if enc is None:
            raw = topic.encode("utf-8", "replace")
            prefixed = len(raw).to_bytes(2, "big") + raw
            enc = (prefixed, prefixed + b"\0" if self._v5 else prefixed)
            if len(self._topics) >= _ROUTE_CACHE_MAX:
                self._topics.clear()
            self._topics[topic] = enc
        return enc

    def publish_qos0(self, topic: str, payload: bytes, retain: bool, max_buffered: int) -> bool:
        """Write a QoS 0 PUBLISH (corked) unless more than ``max_buffered`` bytes already
        wait to be sent (then False, nothing written).

        The whole QoS 0 hot path in one call (it was four: the buffer check, the packet,
        its header, the cork): with messages arriving to cold caches every Python call
        costs a microsecond or two."""
        proto = self._proto
        out = proto.out
        t = self._transport
        if t is not None and t.get_write_buffer_size() + len(out) > max_buffered:
            return False
        enc = self._topics.get(topic) or self._encoded_topic(topic)
        size = len(enc[1]) + len(payload)
        out += bytes((0x30 | retain, size)) if size < 0x80 else _fixed_header(0x30 | retain, size)
        out += enc[1]
        out += payload
        if len(out) >= _CORK_BYTES:
            proto.flush()
        elif not proto._flush_due and not proto._reading and proto._wloop is not None:
            proto._flush_due = True
            proto._wloop.call_soon(proto.flush)
        return True

    def publish(self, topic: str, payload: bytes, qos: int, retain: bool) -> int | None:
        """Write a PUBLISH (corked); returns its packet id for QoS>=1 (acked through
        ``_on_ack``: gmqtt's id allocator and in-flight store see it as their own)."""
        if not qos:  # already admitted (a queued message): no buffer bound applies
            self.publish_qos0(topic, payload, retain, sys.maxsize)
            return None
        enc = self._topics.get(topic) or self._encoded_topic(topic)
        mid: int = self._ids.next_id()
        props = b"\0" if self._v5 else b""
        size = len(enc[0]) + 2 + len(props) + len(payload)
        packet = b"".join(
            (
                _fixed_header(0x30 | qos << 1 | retain, size),
                enc[0],
                mid.to_bytes(2, "big"),
                props,
                payload,
            )
        )
        self._storage.push_message(mid, packet)
        self._proto.cork(packet)
        return mid

    def subscribe(self, topic_filter: str, qos: int, sub_id: int) -> int:
        sub = self._sub_cls(topic_filter, qos=qos)
        if self.sub_ids:
            mid: int = self._client.subscribe([sub], subscription_identifier=sub_id)
        else:
            mid = self._client.subscribe([sub])
        self._sub_mids.add(mid)
        return mid

    def unsubscribe(self, filters: list[str]) -> None:
        self._client.unsubscribe(filters)

    def send_ack(self, qos: int, mid: int) -> None:
        """PUBACK (QoS 1) or PUBREC (QoS 2), corked; success needs no reason code."""
        if not self.lost.is_set() and self._proto is not None:
            self._proto.cork(bytes((0x40 if qos == 1 else 0x50, 2, mid >> 8, mid & 0xFF)))

    def write_buffer_size(self) -> int:
        """Bytes not yet sent: the transport's buffer and what is corked."""
        t = self._transport
        if t is None:
            return 0
        return int(t.get_write_buffer_size()) + len(self._proto.out)

    def abort(self, reason: str) -> None:
        """Drop the socket now (no DISCONNECT: the broker publishes the will)."""
        if not self.lost.is_set():
            self.lost_reason = reason
            self.lost.set()
            self._disarm()
            self._owner._on_lost(self, reason)
        t = self._transport
        if t is not None and not t.is_closing():
            t.abort()

    async def close(self, graceful: bool, timeout: float) -> None:
        """Send DISCONNECT (graceful) or just close the socket; never raises."""
        self.lost.set()  # anything after this is our own doing, not a loss
        conn = getattr(self._client, "_connection", None)
        if conn is None:
            return
        if self._proto is not None:
            self._proto.flush()  # what is corked goes before DISCONNECT or the close
        try:
            if graceful and not conn.is_closing():
                await asyncio.wait_for(self._client.disconnect(), timeout)
            elif not conn.is_closing():
                await asyncio.wait_for(conn.close(), timeout)
        except (TimeoutError, OSError, RuntimeError, AttributeError):
            if self._transport is not None:
                self._transport.abort()


# ---------------------------------------------------------------------------------------
# The connection
# ---------------------------------------------------------------------------------------
@dataclass(slots=True)
class _Burst:
    """Failures since the connection was last stable: each kind is logged once."""

    kinds: set[str] = field(default_factory=set)
    failures: int = 0
    since: float = 0.0


@register_driver("mqtt")
class MqttConnection(Driver[MqttSettings]):
    """One broker connection shared by all nodes that name it; see the module docstring.

    ``async with MqttConnection(...) as conn`` or ``start()``/``close()``. All methods are
    called on the event loop's thread. ``[mqtt.default]`` exists without configuration.
    """

    Settings = MqttSettings
    implicit_default = True

    def __init__(
        self,
        name: str,
        settings: MqttSettings,
        env: DriverEnv | None = None,
        *,
        device_id: str | None = None,
        spool: Spool | None = None,
    ) -> None:
        super().__init__(name, settings, env)
        device_id = device_id if device_id is not None else self.env.device_id
        if not device_id or any(c in device_id for c in "/+#\0"):
            raise ValueError(f"device id {device_id!r} cannot be part of an MQTT topic")
        self.device_id = device_id
        self.client_id = settings.client_id or f"mechaway-{device_id}-{name}"
        self.status_topic = f"mechaway/{device_id}/status"
        if spool is None and self.env.spools is not None:
            spool = self.env.spools.open(
                "mqtt", name, max_items=settings.spool_max, overflow=settings.spool_overflow
            )
        self._spool: Spool = (
            spool
            if spool is not None
            else MemorySpool(max(settings.spool_max, 1), settings.spool_overflow)
        )
        self._counters = dict.fromkeys(_COUNTERS, 0)
        self._lib_log = _DemotedLog(logging.getLogger(f"{__name__}.lib"))
        self._label = f"mqtt[{name}]"
        self._state = "new"
        self._state_since = time.time()
        self._last_error: str | None = None
        self._connects = 0
        self._up_at = 0.0  # when the current session was accepted (monotonic)
        self._burst = _Burst()
        self._closing = False
        self._runner: asyncio.Task[None] | None = None
        self._closer: asyncio.Task[None] | None = None
        self._session: _GmqttSession | None = None
        self._connected = asyncio.Event()
        # subscriptions: filter -> handles; routing cache: topic -> handlers
        self._subs: dict[str, list[Subscription]] = {}
        self._routes: dict[str, tuple[Handler, ...]] = {}
        # MQTT 5: the broker sends one copy per matching subscription, tagged with its
        # identifier; routing by identifier delivers each copy to its own handlers only.
        self._filter_ids: dict[str, int] = {}
        self._id_handlers: dict[int, tuple[Handler, ...]] = {}
        self._next_sub_id = itertools.count(1)
        self._suback_waiters: dict[int, asyncio.Future[None]] = {}
        # QoS>=1 publishing: in send order, by packet id; retry = resends after a loss
        self._inflight: deque[_Out] = deque()
        self._by_mid: dict[int, _Out] = {}
        self._unacked = 0
        self._window = settings.max_inflight
        self._retry: deque[_Out] = deque()
        self._last_sent_spool_id = 0
        self._all_acked = asyncio.Event()  # no QoS>=1 publish awaits its ack (or offline)
        self._all_acked.set()
        self._handler_tasks: set[asyncio.Task[None]] = set()
        self._logged_once: set[str] = set()
        self._good_topics: set[str] = set()  # topics already checked for publishing

    @classmethod
    def preload(cls, env: DriverEnv) -> list[str]:
        """Connections with publishes spooled before a restart: they connect at start and
        drain even if no flow uses them any more."""
        return env.spools.pending("mqtt") if env.spools is not None else []

    # -- lifecycle ------------------------------------------------------------------------
    async def start(self) -> None:
        """Start connecting in the background; never raises for a broker that is down or
        refuses (see ``status()``). ConfigError for unreadable TLS files."""
        if self._runner is not None or self._closing:
            return
        ssl_ctx = self._ssl_context()
        _gmqtt()  # import now: an import problem is a start-up error, not a reconnect loop
        self._state = "connecting"
        self._runner = asyncio.create_task(
            self._supervise(ssl_ctx), name=f"{self._label}.supervisor"
        )

    async def close(self, timeout: float = 5.0) -> None:
        """Publish retained ``offline``, wait (bounded) for acks, disconnect. Idempotent
        (concurrent calls wait for the first).

        QoS>=1 messages still unacknowledged go back to the spool so a durable spool keeps
        them for the next start."""
        if self._closer is None:
            self._closer = asyncio.create_task(self._close(timeout), name=f"{self._label}.close")
        await asyncio.shield(self._closer)

    async def _close(self, timeout: float) -> None:
        self._closing = True
        deadline = time.monotonic() + timeout
        session = self._session
        if session is not None and not session.lost.is_set():
            if self.settings.birth:
                self._send(session, _Out(self.status_topic, b"offline", 1, True, requeue=False))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._all_acked.wait(), deadline - time.monotonic())
        if self._runner is not None:
            self._runner.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._runner
            self._runner = None
        if session is not None:
            self._session = None
            await session.close(graceful=True, timeout=max(0.1, deadline - time.monotonic()))
        for task in list(self._handler_tasks):
            task.cancel()
        if self._handler_tasks:
            await asyncio.wait(self._handler_tasks, timeout=max(0.1, deadline - time.monotonic()))
        self._requeue_unacked()
        for out in self._retry:  # keep them for the next start (durable spools)
            waiting = out.confirmed
            stored = self._spool_append(
                out.topic, out.payload, out.qos, out.retain, durable=waiting is not None
            )
            if waiting is None:
                continue
            if stored is None:  # dropped by the bound (counted), or a memory spool
                waiting.cancel()
            else:  # a source on another connection may still PUBACK it: once on disk
                on_disk = asyncio.wrap_future(stored)
                on_disk.add_done_callback(functools.partial(_settle_after, waiting))
        self._retry.clear()
        self._connected.clear()
        for fut in self._suback_waiters.values():
            fut.cancel()
        self._suback_waiters.clear()
        self._set_state("closed")

    async def wait_connected(self, timeout: float | None = None) -> None:
        """Wait until connected; NotConnected (with the last error) after ``timeout``."""
        try:
            await asyncio.wait_for(self._connected.wait(), timeout)
        except TimeoutError as err:
            raise NotConnected(
                f"{self._label}: not connected to {self.settings.host}:{self.settings.port}"
                f" after {timeout:g} s ({self._state}: {self._last_error or 'no error yet'})"
            ) from err

    async def wait_subscribed(self, timeout: float = 5.0) -> None:
        """Wait until the broker acknowledged every SUBSCRIBE sent so far."""
        waiters = [f for f in self._suback_waiters.values() if not f.done()]
        if waiters:
            _, late = await asyncio.wait(waiters, timeout=timeout)
            if late:
                raise NotConnected(f"{self._label}: SUBACK not received in {timeout:g} s")

    # -- subscribing ---------------------------------------------------------------------------
    def subscribe(self, topic_filter: str, qos: int, handler: Handler) -> Subscription:
        """Call ``handler`` for each message matching ``topic_filter`` (``+``, ``#``,
        ``$share/group/...``), on this and every later connection.

        A handler may be sync or async. Handlers are called in arrival order; async ones
        run concurrently. For QoS 1/2 the acknowledgement goes to the broker only after the
        handlers of that message (and of every earlier one) completed, so a handler that
        stores the message durably gets at-least-once delivery. A handler that raises is
        counted and logged; its message is acknowledged all the same (no poison loops).
        """
        if qos not in (0, 1, 2):
            raise ValueError(f"qos must be 0, 1 or 2, not {qos!r}")
        sub = Subscription(topic_filter, qos, handler, check_filter(topic_filter))
        existing = self._subs.get(topic_filter)
        old_qos = max((s.qos for s in existing), default=-1) if existing else -1
        self._subs.setdefault(topic_filter, []).append(sub)
        if topic_filter not in self._filter_ids:
            self._filter_ids[topic_filter] = next(self._next_sub_id)
        self._routes_changed()
        session = self._session
        if session is not None and qos > old_qos:
            self._send_subscribe(session, topic_filter, qos)
        return sub

    def unsubscribe(self, sub: Subscription) -> None:
        """Stop delivering to ``sub``; the broker subscription goes with its last handler."""
        subs = self._subs.get(sub.topic_filter)
        if not subs or sub not in subs:
            return
        subs.remove(sub)
        if not subs:
            del self._subs[sub.topic_filter]
            del self._filter_ids[sub.topic_filter]
        self._routes_changed()
        if not subs:
            session = self._session
            if session is not None:
                try:
                    session.unsubscribe([sub.topic_filter])
                except Exception as err:  # the socket may be going: the loss path resubscribes
                    self._warn_once("unsubscribe", f"unsubscribe failed: {err!r}")

    def _routes_changed(self) -> None:
        self._routes.clear()
        self._id_handlers = {
            self._filter_ids[flt]: tuple(sub.handler for sub in subs)
            for flt, subs in self._subs.items()
        }

    def _send_subscribe(self, session: _GmqttSession, topic_filter: str, qos: int) -> None:
        try:
            mid = session.subscribe(topic_filter, qos, self._filter_ids[topic_filter])
        except Exception as err:
            session.abort(f"subscribe failed: {err!r}")
            return
        self._suback_waiters[mid] = asyncio.get_running_loop().create_future()

    def _on_suback(self, session: _GmqttSession, mid: int, codes: tuple[int, ...]) -> None:
        fut = self._suback_waiters.pop(mid, None)
        if fut is not None and not fut.done():
            fut.set_result(None)
        refused = [c for c in codes if c >= 0x80]
        if refused:
            self._counters["subscribe_refused"] += len(refused)
            self._warn_once("suback", f"broker refused a subscription (codes {refused})")

    def _route(self, topic: str) -> tuple[Handler, ...]:
        handlers = self._routes.get(topic)
        if handlers is None:
            if _bad_topic(topic):  # the message is refused, and the topic not cached
                return ()
            handlers = tuple(
                s.handler
                for subs in self._subs.values()
                for s in subs
                if topic_matches(s.match_filter, topic)
            )
            if len(self._routes) >= _ROUTE_CACHE_MAX:
                self._routes.clear()
            self._routes[topic] = handlers
        return handlers

    # -- receiving --------------------------------------------------------------------------
    def _merged_handlers(self, sub_ids: list[int]) -> tuple[Handler, ...]:
        """The handlers of several matching filters (``_on_message`` routes the usual
        zero or one subscription identifier itself)."""
        merged: dict[int, Handler] = {}  # one call per handler even if two filters match
        for sub_id in sub_ids:
            for handler in self._id_handlers.get(sub_id, ()):
                merged.setdefault(id(handler), handler)
        return tuple(merged.values())

    def _on_message(
        self, session: _GmqttSession, msg: Incoming, mid: int | None, sub_ids: list[int] | None
    ) -> None:
        counters = self._counters
        topic = msg.topic
        entry: list[Any] | None = None
        if mid is not None:
            entry = [msg.qos, mid, False]
        if len(msg.payload) > self.settings.max_payload_bytes:
            counters["oversize_dropped"] += 1
            self._warn_once(
                "oversize",
                f"dropping incoming payloads over "
                f"{self.settings.max_payload_bytes} bytes (first on {topic!r})",
            )
            self._ack(session, entry)
            return
        if not sub_ids:
            handlers = self._routes.get(topic) or self._route(topic)
        elif "+" in topic or "#" in topic or "\0" in topic:  # ~25 ns; _route checks the rest
            handlers = ()
        elif len(sub_ids) == 1:
            handlers = self._id_handlers.get(sub_ids[0], ())
        else:
            handlers = self._merged_handlers(sub_ids)
        if not handlers:
            if _bad_topic(topic):
                session.protocol_error(f"PUBLISH to a topic with a wildcard or NUL: {topic!r}")
                return
            counters["unrouted"] += 1
            self._ack(session, entry)
            return
        if entry is None and len(self._handler_tasks) >= _MAX_PENDING_HANDLERS:
            counters["rx_dropped_overload"] += 1
            return
        counters["rx"] += 1
        pending: list[Awaitable[None]] | None = None
        for handler in handlers:
            try:
                result = handler(msg)
            except Exception as err:
                self._handler_failed(topic, err)
                continue
            if result is not None:
                if pending is None:
                    pending = []
                pending.append(result)
        if pending is None:
            if entry is not None:
                self._ack(session, entry)
            return
        if entry is not None:
            session.pending_acks.append(entry)
            if len(session.pending_acks) > _RECEIVE_MAX:
                self._over_receive_maximum(session)
        task = asyncio.create_task(
            self._finish(session, entry, topic, pending), name=f"{self._label}.handler"
        )
        self._handler_tasks.add(task)
        task.add_done_callback(self._handler_tasks.discard)

    async def _finish(
        self,
        session: _GmqttSession,
        entry: list[Any] | None,
        topic: str,
        pending: list[Awaitable[None]],
    ) -> None:
        unstored: StoreUnavailable | None = None
        try:
            for aw in pending:
                try:
                    await aw
                except StoreUnavailable as err:  # the store could not keep it (disk full)
                    unstored = err
                except Exception as err:
                    self._handler_failed(topic, err)
        finally:
            if entry is not None:
                if unstored is not None and not self.settings.clean_session:
                    self._redeliver(session, unstored)
                else:
                    if unstored is not None:
                        self._acked_unstored(topic, unstored)
                    entry[2] = True
                    self._flush_acks(session)

    def _redeliver(self, session: _GmqttSession, err: StoreUnavailable) -> None:
        """A message the store could not keep is not acknowledged: the session ends, and the
        broker (persistent session) delivers it again on the next one, after the backoff."""
        self._counters["redeliveries_requested"] += 1
        if "redeliver" not in self._logged_once:
            self._logged_once.add("redeliver")
            log.warning(
                "%s: %s; not acknowledged, reconnecting so that the broker delivers it again"
                " (logged once per burst)",
                self._label,
                err,
            )
        session.abort(f"store unavailable ({err.reason}): asking the broker to redeliver")

    def _acked_unstored(self, topic: str, err: StoreUnavailable) -> None:
        """A clean session keeps nothing across a reconnect: ending it would lose this
        message and every other in flight, so it is acknowledged, counted, and said."""
        self._counters["acked_unstored"] += 1
        if "unstored" not in self._logged_once:
            self._logged_once.add("unstored")
            log.error(
                "%s: a message on %r was acknowledged although the store could not keep it"
                " (%s); with clean_session = false the broker would deliver it again"
                " (logged once per burst)",
                self._label,
                topic,
                err,
            )

    def _ack(self, session: _GmqttSession, entry: list[Any] | None) -> None:
        if entry is None:
            return
        if not session.pending_acks:
            session.send_ack(entry[0], entry[1])
        else:  # an earlier message's async handler is still running: keep the order
            entry[2] = True
            session.pending_acks.append(entry)
            if len(session.pending_acks) > _RECEIVE_MAX:
                self._over_receive_maximum(session)
            self._flush_acks(session)

    @staticmethod
    def _over_receive_maximum(session: _GmqttSession) -> None:
        """More QoS>0 messages unacknowledged than the client allows (MQTT 5's receive
        maximum, 65535 when not sent; a 3.1.1 broker has no more packet ids): a broker
        that ignores it would grow the acks and handler tasks held without bound."""
        session.protocol_error(f"over {_RECEIVE_MAX} QoS>0 messages sent unacknowledged")

    @staticmethod
    def _flush_acks(session: _GmqttSession) -> None:
        acks = session.pending_acks
        while acks and acks[0][2]:
            qos, mid, _ = acks.popleft()
            session.send_ack(qos, mid)

    def _handler_failed(self, topic: str, err: Exception) -> None:
        self._counters["handler_errors"] += 1
        if "handler" not in self._logged_once:
            self._logged_once.add("handler")
            log.warning(
                "%s: a handler raised on %r: %r (counted; logged once per burst)",
                self._label,
                topic,
                err,
                exc_info=err,
            )

    # -- publishing ---------------------------------------------------------------------------
    def publish(
        self,
        topic: str,
        payload: bytes,
        qos: int = 0,
        retain: bool = False,
        *,
        confirm: bool = False,
    ) -> asyncio.Future[None] | None:
        """Queue or write one message; never blocks, never raises for a broker outage.

        Connected: QoS 0 is written now (dropped and counted while the socket buffer is
        over ``max_write_buffer_bytes``); QoS>=1 is written now unless earlier ones wait in
        the spool or the in-flight window is full, then it queues behind them (order kept).
        Offline: QoS>=1 goes to the spool, QoS 0 follows ``offline_qos0``. NotConnected
        after ``close()``; ValueError for a bad topic or QoS.

        ``confirm`` (QoS>=1): returns a future that resolves once the message is safe: the
        broker acknowledged it (PUBACK, or PUBCOMP for QoS 2), or it is fsynced in the
        spool. An MQTT QoS 1 source holds its own PUBACK on it, so a message is never
        acknowledged upstream while only this process's memory holds it. None when there
        is nothing to wait for (QoS 0, or a drop that was counted).
        """
        if self._closing:
            raise NotConnected(f"{self._label} is closed")
        if qos not in (0, 1, 2):
            raise ValueError(f"qos must be 0, 1 or 2, not {qos!r}")
        if topic not in self._good_topics:
            _check_topic(topic)
            if len(self._good_topics) >= _ROUTE_CACHE_MAX:
                self._good_topics.clear()
            self._good_topics.add(topic)
        if len(payload) > self.settings.max_payload_bytes:
            self._counters["tx_oversize_dropped"] += 1
            self._warn_once(
                "tx_oversize",
                f"refusing to publish payloads over "
                f"{self.settings.max_payload_bytes} bytes (first on {topic!r})",
            )
            return None
        session = self._session
        if qos == 0:
            if session is not None:
                try:
                    written = session.publish_qos0(
                        topic, payload, retain, self.settings.max_write_buffer_bytes
                    )
                except Exception as err:
                    session.abort(f"publish failed: {err!r}")
                    self._counters["qos0_dropped_offline"] += 1
                    return None
                if not written:
                    self._counters["qos0_dropped_backpressure"] += 1
                    return None
                self._counters["tx"] += 1
            elif self.settings.offline_qos0 == "queue":
                self._spool_append(topic, payload, 0, retain)
            else:
                self._counters["qos0_dropped_offline"] += 1
            return None
        if (
            session is not None
            and not self._retry
            and self._unacked < self._window
            and not len(self._spool)
        ):
            out = _Out(topic, _own(payload), qos, retain)
            if confirm:
                out.confirmed = asyncio.get_running_loop().create_future()
            self._send(session, out)
            return out.confirmed
        stored = self._spool_append(topic, payload, qos, retain, durable=confirm)
        if session is not None:
            self._pump(session)
        return asyncio.wrap_future(stored) if confirm and stored is not None else None

    def _send(self, session: _GmqttSession, out: _Out) -> None:
        """Write one queued message on the session, tracked until acked (QoS>=1)."""
        self._inflight.append(out)
        if out.qos:
            self._unacked += 1
            self._all_acked.clear()
        try:
            mid = session.publish(out.topic, out.payload, out.qos, out.retain)
        except Exception as err:  # library error: treat as a dead connection, keep the message
            session.abort(f"publish failed: {err!r}")
            return
        self._counters["tx"] += 1
        if out.qos == 0 or mid is None:
            out.done = True
            _resolve(out.confirmed)
            if out.qos:
                self._unacked -= 1
                if not self._unacked:
                    self._all_acked.set()
            self._complete_head()
        else:
            self._by_mid[mid] = out

    def _on_ack(self, session: _GmqttSession, mid: int) -> None:
        if session is not self._session:
            return
        out = self._by_mid.pop(mid, None)
        if out is None or out.done:
            self._on_broker_fault(session, "unexpected_acks", f"an ack for packet id {mid}")
            return
        out.done = True
        _resolve(out.confirmed)
        self._unacked -= 1
        if not self._unacked:
            self._all_acked.set()
        self._counters["acked"] += 1
        self._complete_head()
        if (self._retry or len(self._spool)) and (
            self._window - self._unacked >= max(1, self._window // 2)
        ):
            self._pump(session)

    def _complete_head(self) -> None:
        """Pop acked messages off the head; remove acked spool items, in order."""
        inflight = self._inflight
        last_spool_id = 0
        while inflight and inflight[0].done:
            out = inflight.popleft()
            if out.spool_id is not None:
                last_spool_id = out.spool_id
        if last_spool_id:
            self._spool.remove_upto(last_spool_id)

    def _pump(self, session: _GmqttSession) -> None:
        """Send what waits, oldest first: resends after a loss, then the spool."""
        while self._retry and self._unacked < self._window and self._session is session:
            self._counters["resent"] += 1
            self._send(session, self._retry.popleft())
        if self._retry or self._session is not session:
            return
        room = self._window - self._unacked
        if room <= 0 or not len(self._spool):
            return
        spooled_in_flight = sum(1 for o in self._inflight if o.spool_id is not None)
        for item in self._spool.peek(spooled_in_flight + room):
            id_, topic, payload, qos, retain = item
            if id_ <= self._last_sent_spool_id:
                continue
            if self._unacked >= self._window or self._session is not session:
                break
            self._last_sent_spool_id = id_
            self._send(session, _Out(topic, payload, qos, retain, spool_id=id_))

    def _spool_append(
        self, topic: str, payload: bytes, qos: int, retain: bool, durable: bool = False
    ) -> ThreadFuture[Any] | None:
        """Append under the bound and policy; the spool's on-disk future (None: dropped,
        or a memory spool)."""
        spool, max_items = self._spool, self.settings.spool_max
        if len(spool) >= max_items:
            self._counters["spool_dropped"] += 1
            self._warn_once(
                "spool_full",
                f"spool full ({max_items}): {self.settings.spool_overflow.replace('_', ' ')}",
            )
            if self.settings.spool_overflow == "drop_new" or max_items == 0:
                return None
            oldest = spool.peek(1)
            if oldest:
                spool.remove_upto(oldest[0][0])
        stored = spool.append(topic, _own(payload), qos, retain, durable)
        self._counters["spooled"] += 1
        return stored

    def _requeue_unacked(self) -> None:
        """After a loss: unacked direct sends go to the head of the retry queue; spooled
        ones are still in the spool and go again from its oldest."""
        again = [o for o in self._inflight if not o.done and o.spool_id is None and o.requeue]
        self._retry.extendleft(reversed(again))
        self._inflight.clear()
        self._by_mid.clear()
        self._unacked = 0
        self._all_acked.set()
        self._last_sent_spool_id = 0

    # -- the connection loop -------------------------------------------------------------------
    def _on_lost(self, session: _GmqttSession, reason: str) -> None:
        if session is not self._session:
            return
        # explained once, here, so the status and the burst log say the same thing
        reason = self._explain_loss(session, reason, time.monotonic() - self._up_at)
        session.lost_reason = reason
        self._session = None
        self._connected.clear()
        self._requeue_unacked()
        for fut in self._suback_waiters.values():
            fut.cancel()
        self._suback_waiters.clear()
        if not self._closing:
            self._set_state("connecting", reason)

    async def _supervise(self, ssl_ctx: ssl.SSLContext | None) -> None:
        attempt = 0
        s = self.settings
        will = (self.status_topic, b"offline") if s.birth else None
        while not self._closing:
            session = _GmqttSession(
                self,
                label=self._label,
                settings=s,
                client_id=self.client_id,
                will=will,
                ssl_ctx=ssl_ctx,
                lib_log=self._lib_log,
            )
            try:
                try:
                    await session.connect()
                except _Refused as err:
                    self._counters["auth_failures"] += err.auth
                    self._failed("auth refused" if err.auth else "refused", str(err))
                except _Violation as err:
                    self._failed(
                        "protocol error", f"{s.host}:{s.port}: broker violated MQTT: {err}"
                    )
                except (OSError, TimeoutError, _SessionLost) as err:
                    self._failed("unreachable", f"{s.host}:{s.port}: {err}")
                except Exception as err:  # a library bug must not end the loop
                    self._failed("error", repr(err))
                else:
                    up_at = time.monotonic()
                    try:
                        self._connected_on(session)
                    except Exception as err:  # a bug here must not end reconnection
                        log.exception("%s: setting up the connection failed", self._label)
                        session.abort(f"setup failed: {err!r}")
                    try:
                        await asyncio.wait_for(session.lost.wait(), self.settings.stable_after)
                    except TimeoutError:
                        self._stable()
                        await session.lost.wait()
                    if time.monotonic() - up_at >= self.settings.stable_after:
                        attempt = 0
                    if not self._closing:
                        # a loss the broker's fault caused is its own kind in the burst log
                        self._failed("lost", session.lost_reason, session.fault)
            finally:
                if self._session is not session:  # keep a live one for close()
                    await session.close(graceful=False, timeout=1.0)
            if self._closing:
                return
            delay = min(s.reconnect_max, s.reconnect_min * 2 ** min(attempt, 30))
            attempt += 1
            await asyncio.sleep(random.uniform(delay / 2, delay))

    def _on_broker_fault(self, session: _GmqttSession, counter: str, what: str) -> None:
        """The broker misbehaved: counted. What ends the session is logged by ``_failed``
        (the loss or the failed attempt); the rest once per burst here."""
        self._counters[counter] += 1
        if session is self._session and counter not in _SESSION_ENDING:
            self._warn_once(counter, what)

    def _on_dropped_publish(self, session: _GmqttSession, qos: int, mid: int | None) -> None:
        """An incoming PUBLISH far over ``max_payload_bytes`` was skipped unread."""
        self._counters["oversize_dropped"] += 1
        self._warn_once(
            "oversize",
            f"dropping incoming payloads over {self.settings.max_payload_bytes} bytes "
            f"(one skipped unread{'' if mid or not qos else ', its packet id unknown'})",
        )
        if mid is not None and qos:
            self._ack(session, [qos, mid, False])

    def _on_broker_disconnect(self, code: int | None) -> None:
        self._counters["broker_disconnects"] += 1
        self._counters["session_taken_over"] += code == _TAKEN_OVER

    def _explain_loss(self, session: _GmqttSession, reason: str, lasted: float) -> str:
        """The loss reason, with what usually causes it when the broker ends a session
        it has just accepted: a second client with the same id (two daemons with one
        device id), which then take turns kicking each other out."""
        if session.disconnect_code == _TAKEN_OVER:
            return f"{reason}: another client connected with client id {self.client_id!r}"
        if reason == "broker closed the connection" and lasted < self.settings.stable_after:
            return (
                f"{reason} {lasted:.1f} s after accepting it (another client using client id "
                f"{self.client_id!r}? the broker's ACL or limits?)"
            )
        return reason

    def _connected_on(self, session: _GmqttSession) -> None:
        self._session = session
        self._up_at = time.monotonic()
        self._connects += 1
        window = self.settings.max_inflight
        if session.receive_maximum:
            # gmqtt refuses a packet id past receive_maximum - 2; keep room for SUBSCRIBEs
            window = max(1, min(window, session.receive_maximum - 4))
        self._window = window
        self._set_state("connected")
        if self._burst.failures:
            log.debug("%s: connected after %d failed attempts", self._label, self._burst.failures)
        elif not self._burst.kinds:
            log.info(
                "%s: connected to %s:%d as %s",
                self._label,
                self.settings.host,
                self.settings.port,
                self.client_id,
            )
        for flt, subs in self._subs.items():
            self._send_subscribe(session, flt, max(sub.qos for sub in subs))
            if self._session is not session:  # the socket died under the SUBSCRIBE
                return
        if self.settings.birth:
            self._send(session, _Out(self.status_topic, b"online", 1, True, requeue=False))
        self._pump(session)
        if self._session is session:
            self._connected.set()

    def _failed(self, kind: str, message: str, key: str | None = None) -> None:
        """An attempt failed or a session was lost; logged once per burst for each ``key``
        (default: ``kind``)."""
        burst = self._burst
        key = key or kind
        if kind != "lost":
            self._counters["connect_failures"] += 1
            burst.failures += 1
        if not burst.since:
            burst.since = time.monotonic()
        self._last_error = message
        self._set_state({"lost": "connecting"}.get(kind, kind), message)
        if key not in burst.kinds:
            burst.kinds.add(key)
            log.warning(
                "%s: %s: %s (retrying with backoff; logged once per burst)",
                self._label,
                kind,
                message,
            )
        else:
            log.debug("%s: %s: %s", self._label, kind, message)

    def _stable(self) -> None:
        burst = self._burst
        if burst.kinds:
            log.info(
                "%s: connected and stable again after %d failed attempts in %.1f s",
                self._label,
                burst.failures,
                time.monotonic() - burst.since,
            )
        self._burst = _Burst()
        self._logged_once.clear()

    def _set_state(self, state: str, error: str | None = None) -> None:
        if state != self._state:
            self._state = state
            self._state_since = time.time()
        if error is not None:
            self._last_error = error

    def _warn_once(self, key: str, message: str) -> None:
        if key not in self._logged_once:
            self._logged_once.add(key)
            log.warning("%s: %s (counted; logged once per burst)", self._label, message)

    def _ssl_context(self) -> ssl.SSLContext | None:
        s = self.settings
        if not s.tls:
            return None
        for key in ("ca_file", "cert_file", "key_file"):
            path = getattr(s, key)
            if path is not None and not os.path.isfile(path):
                raise ConfigError(f"mqtt.{self.name}.{key}: {path} is not a readable file")
        try:
            ctx = ssl.create_default_context(cafile=s.ca_file)
            if s.cert_file:
                ctx.load_cert_chain(s.cert_file, s.key_file)
        except (OSError, ssl.SSLError) as err:
            raise ConfigError(f"mqtt.{self.name}: TLS files: {err}") from err
        return ctx

    # -- status ------------------------------------------------------------------------------
    @property
    def connected(self) -> bool:
        return self._session is not None

    def status(self) -> dict[str, Any]:
        """State for ``GET /api/v1/status``: JSON-ready."""
        session = self._session
        return {
            "kind": "mqtt",
            "name": self.name,
            "broker": f"{self.settings.host}:{self.settings.port}",
            "client_id": self.client_id,
            "state": self._state,
            "connected": session is not None,
            "since": self._state_since,
            "last_error": self._last_error,
            "reconnects": max(0, self._connects - 1),
            "tcp_nodelay": session.nodelay() if session is not None else None,
            "subscriptions": sorted(self._subs),
            "inflight": self._unacked,
            # received QoS>=1 messages whose PUBACK waits until what the flow made of them
            # is safe (an outbox commit, a downstream broker's ack, a spool fsync)
            "acks_held": len(session.pending_acks) if session is not None else 0,
            "window": self._window,
            "retry_queue": len(self._retry),
            "spool": len(self._spool),
            "counters": dict(self._counters),
        }
