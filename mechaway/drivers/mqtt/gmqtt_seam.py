"""The gmqtt seam: every line of mechaway that knows gmqtt is in this module.

It subclasses four gmqtt 0.8 classes (``MQTTProtocol``, ``MQTTConnection``, ``Client``,
``PersistentStorage``) and touches its private attributes; docs/mqtt.md lists each
override and why, and ``tests/drivers/mqtt/test_seam.py`` fails, naming the attribute,
on a gmqtt that moved or renamed any of them. Swapping the library means writing another
session class with the methods ``MqttConnection`` calls (``connect``, ``publish``,
``publish_qos0``, ``subscribe``, ``unsubscribe``, ``send_ack``, ``abort``, ``close``,
``write_buffer_size``, ``nodelay``) and the callbacks of ``_Owner``.

What is pure MQTT (framing, the PUBLISH codec) is in ``wire.py``; this module wires it
to gmqtt's protocol and packet handlers. About 800 lines, in one module on purpose: what
depends on gmqtt's insides stays in one place.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import socket
import ssl
import sys
import time
from collections import deque
from collections.abc import Callable, Mapping
from typing import Any, Protocol

from mechaway.drivers.mqtt.settings import MqttSettings
from mechaway.drivers.mqtt.wire import (
    DISCONNECT_REASONS,
    OVERSIZE,
    PACKET_NAMES,
    SKIPPED,
    Framer,
    Incoming,
    ack_packet,
    decode_publish,
    encode_topic,
    fixed_header,
    publish_packet,
)
from mechaway.errors import ConfigError, MechawayError

log = logging.getLogger("mechaway.drivers.mqtt")

#: CONNACK codes that mean bad credentials or not authorised (3.1.1 and 5)
_AUTH_CODES = frozenset({4, 5, 134, 135, 140})
#: topic aliases a broker may set although the client allows none (MQTT 5 says it must
#: not; tolerated, bounded: each may name a 64 KB topic); more, or alias 0, end the session
_MAX_ALIASES = 16
#: an incoming packet this much over ``max_payload_bytes`` (topic, properties) is not
#: gathered in memory: a PUBLISH is skipped as it arrives (counted, acked), anything else
#: ends the session
_PACKET_SLACK = 128 * 1024
#: corked writes are flushed at once when this many bytes wait (else once per loop pass)
_CORK_BYTES = 64 * 1024
#: encoded topics kept per session
_TOPIC_CACHE_MAX = 4096


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


def _ignore(cmd: int, packet: bytes) -> None:
    """A packet handler that drops what a dead session still reads."""


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
    ``max_payload_bytes`` is skipped unread or ends the session (``wire.Framer``);
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
            #: splits what the socket reads into packets (``wire.Framer``)
            self.framer = Framer()
            #: corked writes, in call order; a copy, so the packets' objects are freed now
            #: (orjson's output holds ~4 KB whatever its length: a batch of them is MBs)
            self.out = bytearray()
            self._reading = False  # in data_received: it flushes when done
            self._flush_due = False  # a call_soon flush is scheduled
            self._wloop: asyncio.AbstractEventLoop | None = None
            self.v5 = True
            self._failed_once = False
            #: ``bad(what)``: the broker broke MQTT (the session counts it and aborts)
            self.bad: Callable[[str], None] | None = None
            #: ``dropped(qos, mid)``: an oversize PUBLISH was skipped (mid None: not known)
            self.dropped: Callable[[int, int | None], None] | None = None
            self.written = 0  # bytes given to the transport (what it sent: minus its buffer)

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
            """Frame this read (``wire.Framer``); PUBLISH packets of the usual shape are
            decoded here (``wire.decode_publish``) and delivered, everything else goes to
            gmqtt's parser. One loop, no call per packet beyond the decoder: at a few
            hundred messages a second each arrives to cold caches."""
            conn = self._connection
            # (``_connection`` is what gmqtt's ``current_connection`` property returns)
            if conn is None or conn._handler._connection is not conn:
                return  # superseded (gmqtt drops those too); the broker speaks after CONNECT
            conn._last_data_in = monotonic()
            buf, packets = self.framer.feed(data)
            if not packets:
                return
            self._reading = True
            try:
                for first, i, stop in packets:
                    if first & 0xF0 == 0x30:
                        deliver = self.deliver
                        got = decode_publish(first, buf, i, stop, self.v5) if deliver else None
                        if got is None or deliver is None:
                            conn.put_package(Package(first, buf[i:stop]))
                            continue
                        try:
                            deliver(*got)
                        except Exception:  # handlers' errors are counted before: a driver bug
                            if not self._failed_once:
                                self._failed_once = True
                                log.exception("handling an incoming message failed (logged once)")
                    elif first >= 0:
                        conn.put_package(Package(first, buf[i:stop]))
                    elif first == SKIPPED:
                        if self.dropped is not None:
                            self.dropped(i, stop or None)
                    elif first == OVERSIZE and self.bad is not None:
                        name = PACKET_NAMES[i & 0xF0]
                        self.bad(f"{name} of {stop} bytes (over {self.framer.max_packet})")
                    elif self._transport is not None:  # MALFORMED, or OVERSIZE unheard
                        self._transport.abort()  # nothing after it can be read
            finally:
                self._reading = False
                if self.out:
                    self.flush()

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
        self.accepted_at = 0.0  # when (monotonic): messages may come before connect() returns
        self.violation: str | None = None  # how the broker broke MQTT, if it did
        self.fault: str | None = None  # the counter of the broker fault that ended it
        self._sub_mids: set[int] = set()  # SUBSCRIBEs awaiting their SUBACK
        self._suback_codes: tuple[int, ...] | None = None
        self._delivered = False  # set by the callbacks of gmqtt's PUBLISH path
        self._gm = {  # gmqtt's handlers of the packets it may see on an accepted session
            t: getattr(handler, f"_handle_{PACKET_NAMES[t].lower()}_packet")
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
        for t in PACKET_NAMES:
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
        for t in PACKET_NAMES:
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
        self.protocol_error(f"unexpected {PACKET_NAMES[cmd & 0xF0]} packet{where}")

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
            self.accepted_at = time.monotonic()
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
        protocol.framer.max_packet = self._settings.max_payload_bytes + _PACKET_SLACK
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
            what = DISCONNECT_REASONS.get(code, "reason not known")
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
            enc = encode_topic(topic, self._v5)
            if len(self._topics) >= _TOPIC_CACHE_MAX:
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
        out += bytes((0x30 | retain, size)) if size < 0x80 else fixed_header(0x30 | retain, size)
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
        packet = publish_packet(enc[0], mid, payload, qos=qos, retain=retain, v5=self._v5)
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
            self._proto.cork(ack_packet(qos, mid))

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

