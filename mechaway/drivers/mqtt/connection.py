"""``MqttConnection``: one broker connection shared by every node that names it.

It knows nothing of flows. It owns reconnection (the driver layer's ``Supervisor``:
jittered exponential backoff, resubscribe), the device's birth/last-will topic, the
order and durability of QoS>=1 publishes across outages (through a ``Spool``), and turns
every bad input (refused or wrong credentials, oversize payloads, a handler that raises,
a broker that breaks MQTT or goes silent) into a counter and one log line per burst.

The client library (gmqtt, chosen by ``benchmarks/mqtt_clients.py``: ~6x aiomqtt 2's
throughput at a tenth of its CPU per message) is reached only through
``gmqtt_seam._GmqttSession``.

Over 800 lines on purpose: it is one class whose receive path, acknowledgement order,
in-flight window, spool, parking and loop check share its state on the hot path (a
message touches several of them in one call); split into mixins it would be the same
class in several files, each needing the others to be read.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import os
import ssl
import time
import zlib
from collections import deque
from collections.abc import Awaitable, Callable
from concurrent.futures import Future as ThreadFuture
from dataclasses import dataclass
from typing import Any

from mechaway.drivers.base import Driver, DriverEnv, LinkFailed, Supervisor, register_driver
from mechaway.drivers.mqtt.gmqtt_seam import (
    _DemotedLog,
    _gmqtt,
    _GmqttSession,
    _Refused,
    _SessionLost,
    _Violation,
)
from mechaway.drivers.mqtt.settings import MqttSettings
from mechaway.drivers.mqtt.spool import MemorySpool, Spool
from mechaway.drivers.mqtt.topics import bad_topic, check_filter, check_topic, topic_matches
from mechaway.drivers.mqtt.wire import TAKEN_OVER, Incoming
from mechaway.errors import ConfigError, NotConnected, StoreUnavailable
from mechaway.logs import OncePerKey

__all__ = ["Handler", "MqttConnection", "Subscription"]

log = logging.getLogger("mechaway.drivers.mqtt")

Handler = Callable[[Incoming], Awaitable[None] | None]

#: at most this many async handler runs in flight; QoS 0 beyond it is dropped and counted
_MAX_PENDING_HANDLERS = 10_000
_ROUTE_CACHE_MAX = 4096
#: QoS>0 messages a broker may send us unacknowledged (MQTT 5's default receive maximum)
_RECEIVE_MAX = 65_535
#: a persistent session's QoS>0 messages that no subscription takes yet, in its first
#: seconds, wait this long for one unacknowledged: after a restart the broker sends what
#: it kept before the flows have subscribed again
_SETTLE_S = 5.0
#: at most this many wait so; more are acknowledged as unrouted
_MAX_PARKED = 10_000
#: a publish made while handling a message, to a topic this connection's own
#: subscriptions take, comes back as a message: a flow that feeds itself. Each message
#: from outside may go round such a loop this many times; the next publish is dropped
#: (counted, in ``problems``): one message became 59,302 in 3 s without it (issue 12)
_MAX_HOPS = 8
#: ``problems`` reports a loop for this long after its last dropped publish
_LOOP_REPORT_S = 300.0
#: MQTT 5 subscription identifiers are 1..268435455 (a variable byte integer)
_MAX_SUB_ID = 268_435_455


@dataclass(eq=False, slots=True)
class Subscription:
    """Handle returned by ``MqttConnection.subscribe``; pass it to ``unsubscribe``."""

    topic_filter: str
    qos: int
    handler: Handler
    #: the filter without its ``$share/<group>/`` prefix, used to route messages
    match_filter: str = ""


def _own(payload: bytes) -> bytes:
    """A copy sized to its content, for payloads the driver keeps (in flight, spooled):
    orjson's output holds ~4 KB whatever its length, 400 MB for a full default spool."""
    return memoryview(payload).tobytes()


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
    "parked",  # QoS>0 a persistent session brought before a subscription took it (see _SETTLE_S)
    "held_at_stop",  # QoS>0 not acknowledged as the daemon stopped: the broker resends them
    "echoes",  # publishes made handling a message that come back through our subscriptions
    "loop_dropped",  # ... dropped after _MAX_HOPS rounds: a flow that feeds itself
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



# ---------------------------------------------------------------------------------------
# The connection
# ---------------------------------------------------------------------------------------
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
        #: the driver layer's status holds the counters; the hot path adds to this dict
        self.health.counters = self._counters = dict.fromkeys(_COUNTERS, 0)
        self._lib_log = _DemotedLog(logging.getLogger("mechaway.drivers.mqtt.lib"))
        self._label = f"mqtt[{name}]"
        self._up_at = 0.0  # when the current session was accepted (monotonic)
        #: warnings logged once per burst (reset when the connection is stable again)
        self._once = OncePerKey(log)
        self._closing = False
        #: the daemon is stopping: the broker keeps this session's subscriptions and what
        #: it holds for them (no UNSUBSCRIBE, no ack for what no flow takes any more)
        self._stopping = False
        #: (session, message, its ack entry) waiting for a subscription (``_park``)
        self._parked: list[tuple[_GmqttSession, Incoming, list[Any]]] = []
        self._park_timer: asyncio.TimerHandle | None = None
        #: loops: the round of the message whose handlers run now (-1: none), and per
        #: topic the rounds of our publishes still to come back (``_echo``)
        self._rx_round = -1
        self._echoes: dict[str, deque[int]] = {}
        self._loop_at = 0.0  # when a loop's publish was last dropped (monotonic)
        self._loop_topic = ""
        self._sup: Supervisor[_GmqttSession] | None = None
        self._ssl: ssl.SSLContext | None = None
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
        if self._sup is not None or self._closing:
            return
        self._ssl = self._ssl_context()
        _gmqtt()  # import now: an import problem is a start-up error, not a reconnect loop
        s = self.settings
        self._sup = Supervisor(
            self._label,
            self.health,
            s,
            open=self._open,
            lost=self._lost,
            up=self._up,
            release=self._release,
            logger=log,
            on_stable=self._once.reset,
            states_by_kind=True,
            target=f"{s.host}:{s.port} as {self.client_id}",
        )
        self._sup.start()

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
        if self._sup is not None:
            self._sup.closing = True  # a loss from now on is our own doing
        deadline = time.monotonic() + timeout
        session = self._session
        if session is not None and not session.lost.is_set():
            if self.settings.birth:
                self._send(session, _Out(self.status_topic, b"offline", 1, True, requeue=False))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._all_acked.wait(), deadline - time.monotonic())
        if self._sup is not None:
            await self._sup.stop()
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
        self._parked.clear()
        if self._park_timer is not None:
            self._park_timer.cancel()
            self._park_timer = None
        for fut in self._suback_waiters.values():
            fut.cancel()
        self._suback_waiters.clear()
        self.health.set("closed")

    async def wait_connected(self, timeout: float | None = None) -> None:
        """Wait until connected; NotConnected (with the last error) after ``timeout``."""
        try:
            await asyncio.wait_for(self._connected.wait(), timeout)
        except TimeoutError as err:
            why = f"{self.health.state}: {self.health.last_error or 'no error yet'}"
            raise NotConnected(
                f"{self._label}: not connected to {self.settings.host}:{self.settings.port}"
                f" after {timeout:g} s ({why})"
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
            self._filter_ids[topic_filter] = self._sub_id_for(topic_filter)
        self._routes_changed()
        session = self._session
        if session is not None and qos > old_qos:
            self._send_subscribe(session, topic_filter, qos)
        if self._parked:
            self._unpark()
        return sub

    def _sub_id_for(self, topic_filter: str) -> int:
        """The filter's MQTT 5 subscription identifier: the same in every run of the
        daemon, so what a persistent session kept, tagged with the identifier of the
        run before, reaches the same filter's handlers after a restart."""
        sub_id = zlib.crc32(topic_filter.encode()) % _MAX_SUB_ID + 1
        used = set(self._filter_ids.values())
        while sub_id in used:  # two filters with one hash: the next free one
            sub_id = sub_id % _MAX_SUB_ID + 1
        return sub_id

    def stopping(self) -> None:
        """The daemon is stopping (told before its flows stop): a persistent session
        keeps its subscriptions (the sources' unsubscribes stay local) and what the
        broker holds for them (QoS>0 messages no flow takes any more are not
        acknowledged: the broker delivers them again on the next start)."""
        self._stopping = True

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
        if not subs and not self._stopping:
            session = self._session
            if session is not None:
                try:
                    session.unsubscribe([sub.topic_filter])
                except Exception as err:  # the socket may be going: the loss path resubscribes
                    self._warn_once("unsubscribe", f"unsubscribe failed: {err!r}")

    def _routes_changed(self) -> None:
        self._routes.clear()
        self._echoes.clear()
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
            if bad_topic(topic):  # the message is refused, and the topic not cached
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
            if bad_topic(topic):
                session.protocol_error(f"PUBLISH to a topic with a wildcard or NUL: {topic!r}")
                return
            if entry is not None and (self._stopping or not self.settings.clean_session):
                if self._stopping:  # no ack: the persistent session keeps it
                    counters["held_at_stop"] += 1
                    return
                if self._park(session, msg, entry):
                    return
            counters["unrouted"] += 1
            self._ack(session, entry)
            return
        if entry is None and len(self._handler_tasks) >= _MAX_PENDING_HANDLERS:
            counters["rx_dropped_overload"] += 1
            return
        counters["rx"] += 1
        pending: list[Awaitable[None]] | None = None
        self._rx_round = self._came_back(topic) if self._echoes else 0
        try:
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
        finally:
            self._rx_round = -1
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

    def _came_back(self, topic: str) -> int:
        """The round of a message on ``topic`` if it is one of our own publishes coming
        back (1 for a publish made handling a message from outside), else 0."""
        rounds = self._echoes.get(topic)
        if not rounds:
            return 0
        n = rounds.popleft()
        if not rounds:
            del self._echoes[topic]
        return n

    def _echo(self, topic: str) -> bool:
        """A publish made while handlers run: if our own subscriptions take ``topic`` it
        will come back as a message one round further; False: drop it, a flow that feeds
        itself went round ``_MAX_HOPS`` times (counted, logged once per burst)."""
        handlers = self._routes.get(topic)
        if not (handlers if handlers is not None else self._route(topic)):
            return True
        n = self._rx_round + 1
        if n > _MAX_HOPS:
            self._counters["loop_dropped"] += 1
            self._loop_at = time.monotonic()
            self._loop_topic = topic
            self._once.warning(
                "loop",
                "%s: a flow feeds itself: publishes to %r come back through this "
                "connection's own subscriptions; dropped after %d rounds (counted; logged "
                "once per burst)",
                self._label,
                topic,
                _MAX_HOPS,
            )
            return False
        self._counters["echoes"] += 1
        rounds = self._echoes.get(topic)
        if rounds is None:
            if len(self._echoes) >= _ROUTE_CACHE_MAX:
                self._echoes.clear()
            rounds = self._echoes[topic] = deque(maxlen=1024)
        rounds.append(n)
        return True

    def _park(self, session: _GmqttSession, msg: Incoming, entry: list[Any]) -> bool:
        """A persistent session's QoS>0 message no subscription takes, in the session's
        first ``_SETTLE_S`` seconds (from CONNACK: what the broker kept comes in the same
        read, before the session is even handed to the connection): it waits,
        unacknowledged (its ack holds the later ones back, in order), for a subscription
        to take it (``_unpark``)."""
        if time.monotonic() - session.accepted_at > _SETTLE_S or len(self._parked) >= _MAX_PARKED:
            return False
        self._counters["parked"] += 1
        self._parked.append((session, msg, entry))
        session.pending_acks.append(entry)
        if self._park_timer is None:
            loop = asyncio.get_running_loop()
            self._park_timer = loop.call_later(_SETTLE_S, self._unpark, True)
        return True

    def _unpark(self, expired: bool = False) -> None:
        """Hand the parked messages a subscription now takes to its handlers; once the
        wait is over (``expired``) acknowledge the rest as unrouted."""
        if expired:
            self._park_timer = None
        waiting: list[tuple[_GmqttSession, Incoming, list[Any]]] = []
        sessions = set()
        for session, msg, entry in self._parked:
            if session.lost.is_set():  # never acknowledged: the broker sends it again
                continue
            sessions.add(session)
            handlers = self._route(msg.topic)
            if not handlers:
                if not expired:
                    waiting.append((session, msg, entry))
                    continue
                self._counters["unrouted"] += 1
                entry[2] = True
                continue
            self._counters["rx"] += 1
            pending: list[Awaitable[None]] = []
            for handler in handlers:
                try:
                    result = handler(msg)
                except Exception as err:
                    self._handler_failed(msg.topic, err)
                    continue
                if result is not None:
                    pending.append(result)
            if not pending:
                entry[2] = True
                continue
            task = asyncio.create_task(
                self._finish(session, entry, msg.topic, pending), name=f"{self._label}.handler"
            )
            self._handler_tasks.add(task)
            task.add_done_callback(self._handler_tasks.discard)
        self._parked = waiting
        for session in sessions:
            self._flush_acks(session)
        if not waiting and self._park_timer is not None:
            self._park_timer.cancel()
            self._park_timer = None

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
        self._once.warning(
            "redeliver",
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
        if "unstored" not in self._once.seen:  # an error, not a warning: said as one
            self._once.seen.add("unstored")
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
        if "handler" not in self._once.seen:  # with its traceback
            self._once.seen.add("handler")
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
            check_topic(topic)
            if len(self._good_topics) >= _ROUTE_CACHE_MAX:
                self._good_topics.clear()
            self._good_topics.add(topic)
        # a publish made while handling a message may come back to us (a flow that feeds
        # itself): only topics our subscriptions may take cost a call (hot path: cold
        # caches make each Python call dear)
        if self._rx_round >= 0 and self._routes.get(topic) != () and not self._echo(topic):
            return None
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
        self._echoes.clear()
        if self._parked:  # never acknowledged: the broker delivers them again
            self._parked = [p for p in self._parked if p[0] is not session]
        for fut in self._suback_waiters.values():
            fut.cancel()
        self._suback_waiters.clear()
        if not self._closing:
            self.health.set("connecting", reason)

    # -- the Supervisor's hooks ------------------------------------------------------------
    async def _open(self) -> _GmqttSession:
        """One connection attempt: a fresh session, connected (CONNACK accepted)."""
        s = self.settings
        session = _GmqttSession(
            self,
            label=self._label,
            settings=s,
            client_id=self.client_id,
            will=(self.status_topic, b"offline") if s.birth else None,
            ssl_ctx=self._ssl,
            lib_log=self._lib_log,
        )
        try:
            await session.connect()
        except BaseException as err:
            await session.close(graceful=False, timeout=1.0)
            if isinstance(err, _Refused):
                kind = "auth refused" if err.auth else "refused"
                raise LinkFailed(kind, str(err), "auth_failures" if err.auth else None) from err
            if isinstance(err, _Violation):
                where = f"{s.host}:{s.port}: broker violated MQTT: {err}"
                raise LinkFailed("protocol error", where) from err
            if isinstance(err, (OSError, TimeoutError, _SessionLost)):
                raise LinkFailed("unreachable", f"{s.host}:{s.port}: {err}") from err
            raise
        return session

    def _up(self, session: _GmqttSession) -> None:
        try:
            self._connected_on(session)
        except Exception as err:  # a bug here must not end reconnection
            log.exception("%s: setting up the connection failed", self._label)
            session.abort(f"setup failed: {err!r}")

    @staticmethod
    async def _lost(session: _GmqttSession) -> LinkFailed:
        """Why the session ended (explained by ``_on_lost``); a loss the broker's fault
        caused is its own kind in the burst log."""
        await session.lost.wait()
        return LinkFailed("lost", session.lost_reason, key=session.fault)

    async def _release(self, session: _GmqttSession) -> None:
        if self._session is not session:  # keep a live one for close()
            await session.close(graceful=False, timeout=1.0)

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
        self._counters["session_taken_over"] += code == TAKEN_OVER

    def _explain_loss(self, session: _GmqttSession, reason: str, lasted: float) -> str:
        """The loss reason, with what usually causes it when the broker ends a session
        it has just accepted: a second client with the same id (two daemons with one
        device id), which then take turns kicking each other out."""
        if session.disconnect_code == TAKEN_OVER:
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
        window = self.settings.max_inflight
        if session.receive_maximum:
            # gmqtt refuses a packet id past receive_maximum - 2; keep room for SUBSCRIBEs
            window = max(1, min(window, session.receive_maximum - 4))
        self._window = window
        for flt, subs in self._subs.items():
            self._send_subscribe(session, flt, max(sub.qos for sub in subs))
            if self._session is not session:  # the socket died under the SUBSCRIBE
                return
        if self.settings.birth:
            self._send(session, _Out(self.status_topic, b"online", 1, True, requeue=False))
        self._pump(session)
        if self._session is session:
            self._connected.set()

    def _warn_once(self, key: str, message: str) -> None:
        self._once.warning(key, "%s: %s (counted; logged once per burst)", self._label, message)

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

    def extra_status(self) -> dict[str, Any]:
        """What MQTT adds to the driver layer's status (``GET /api/v1/status``)."""
        session = self._session
        return {
            "connected": session is not None,
            "broker": f"{self.settings.host}:{self.settings.port}",
            "client_id": self.client_id,
            "tcp_nodelay": session.nodelay() if session is not None else None,
            "subscriptions": sorted(self._subs),
            "inflight": self._unacked,
            # received QoS>=1 messages whose PUBACK waits until what the flow made of them
            # is safe (an outbox commit, a downstream broker's ack, a spool fsync)
            "acks_held": len(session.pending_acks) if session is not None else 0,
            "window": self._window,
            "retry_queue": len(self._retry),
            "spool": len(self._spool),
            "problems": self._problems(),
        }

    def _problems(self) -> list[str]:
        """What this connection says of itself in the daemon's ``problems``."""
        dropped = self._counters["loop_dropped"]
        if not dropped or time.monotonic() - self._loop_at > _LOOP_REPORT_S:
            return []
        ago = int(time.monotonic() - self._loop_at)
        return [
            f"a flow feeds itself: {dropped} publishes dropped after {_MAX_HOPS} rounds "
            f"through this connection's own subscriptions (last on {self._loop_topic!r}, "
            f"{ago}s ago; `mechaway validate` names the flow)"
        ]
