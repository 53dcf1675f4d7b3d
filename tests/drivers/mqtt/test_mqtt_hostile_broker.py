"""The MQTT driver against a broker that misbehaves: a scripted fake one (an asyncio TCP
server on 127.0.0.1) that accepts CONNECT and then breaks the protocol, lies about packet
ids, floods, stalls or goes silent. Whatever it does, the connection keeps running (no
exception escapes a task, no buffer grows without bound, no busy loop), counts the fault
in its status, logs it once per burst, and keeps QoS>=1 data spooled until acknowledged."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import struct
import tracemalloc
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest
import pytest_asyncio
from test_mqtt_driver import Collect, publish_packet, until, varint

import mechaway.drivers.base as drivers_base
import mechaway.drivers.mqtt as mqtt_mod
import mechaway.drivers.mqtt.connection as mqtt_connection
from mechaway.drivers.mqtt import MqttConnection, MqttSettings

CONNACK_V5 = b"\x20\x03\x00\x00\x00"  # accepted, no properties
CONNACK_V311 = b"\x20\x02\x00\x00"


class Peer:
    """One client connection as the fake broker sees it."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self.connect: bytes = b""

    async def read_packet(self) -> tuple[int, bytes]:
        first = (await self.reader.readexactly(1))[0]
        size = shift = 0
        while True:
            byte = (await self.reader.readexactly(1))[0]
            size |= (byte & 0x7F) << shift
            shift += 7
            if byte < 0x80:
                break
        return first, await self.reader.readexactly(size)

    async def expect(self, kind: int) -> bytes:
        """The body of the next packet of type ``kind`` (others are skipped)."""
        while True:
            first, body = await self.read_packet()
            if first & 0xF0 == kind:
                return body

    async def send(self, data: bytes) -> None:
        self.writer.write(data)
        await self.writer.drain()


Script = Callable[[Peer, int], Awaitable[None]]


class FakeBroker:
    """Reads each client's CONNECT, then runs ``script(peer, n)`` (n: 1 for the first
    connection, 2 for the next, ...); the socket is closed when the script returns."""

    def __init__(self, script: Script) -> None:
        self.script = script
        self.connects = 0
        self.peers: list[Peer] = []
        self.port = 0
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        peer = Peer(reader, writer)
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        try:
            first, peer.connect = await peer.read_packet()
            assert first == 0x10
            self.connects += 1
            self.peers.append(peer)
            await self.script(peer, self.connects)
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            self._tasks.discard(task)
            writer.transport.abort()

    async def close(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()


@pytest_asyncio.fixture
async def loop_errors() -> AsyncIterator[list[dict[str, Any]]]:
    """What reached the loop's exception handler (an exception nobody retrieved from a
    task or callback); must stay empty."""
    loop = asyncio.get_running_loop()
    seen: list[dict[str, Any]] = []
    old = loop.get_exception_handler()
    loop.set_exception_handler(lambda _loop, ctx: seen.append(ctx))
    try:
        yield seen
    finally:
        loop.set_exception_handler(old)


async def hold(peer: Peer, n: int) -> None:
    """Keep the connection open, reading (and dropping) what the client sends."""
    while True:
        await peer.read_packet()


def settings(broker: FakeBroker, **kw: Any) -> MqttSettings:
    kw.setdefault("reconnect_min", 0.05)
    kw.setdefault("reconnect_max", 0.2)
    kw.setdefault("birth", False)
    return MqttSettings(port=broker.port, **kw)


@contextlib.asynccontextmanager
async def run(
    script: Script, loop_errors: list[dict[str, Any]], **kw: Any
) -> AsyncIterator[tuple[MqttConnection, FakeBroker]]:
    """A fake broker running ``script`` and a connection (not started) pointed at it;
    then: closed, and nothing reached the loop's exception handler."""
    broker = FakeBroker(script)
    await broker.start()
    conn = MqttConnection("hostile", settings(broker, **kw), device_id="d")
    try:
        yield conn, broker
    finally:
        await conn.close(timeout=1.0)
        await broker.close()
    assert loop_errors == []


def counter(conn: MqttConnection, name: str) -> int:
    value: int = conn.status()["counters"][name]
    return value


def warnings_with(caplog: pytest.LogCaptureFixture, text: str) -> int:
    return sum(1 for r in caplog.records if r.levelno >= logging.WARNING and text in r.message)


# -- before CONNACK -----------------------------------------------------------------------
@pytest.mark.asyncio
async def test_no_connack_is_a_timeout_and_a_status(loop_errors: list[dict[str, Any]]) -> None:
    async with run(hold, loop_errors, connect_timeout=0.2) as (conn, broker):
        await conn.start()
        await until(lambda: counter(conn, "connect_failures") >= 2, 10)
        st = conn.status()
        assert st["state"] == "unreachable" and not st["connected"]
        assert "no CONNACK within 0.2 s" in (st["last_error"] or "")
        assert broker.connects >= 2


@pytest.mark.asyncio
@pytest.mark.parametrize(
    ("protocol", "connack", "state", "text"),
    [
        ("5", b"\x20\x03\x00\x87\x00", "auth refused", "Not authorized"),
        ("3.1.1", b"\x20\x02\x00\x05", "auth refused", "not authorised"),
        ("5", b"\x20\x03\x00\x89\x00", "refused", "Server busy"),
        # a 3.1.1-only broker answers an MQTT 5 CONNECT so: gmqtt's own downgrade goes
        # through the reconnect the driver disables, and the attempt used to hang
        ("5", b"\x20\x02\x00\x01", "refused", "unacceptable protocol version"),
    ],
)
async def test_a_refused_connack_is_named(
    loop_errors: list[dict[str, Any]], protocol: str, connack: bytes, state: str, text: str
) -> None:
    async def refuse(peer: Peer, n: int) -> None:
        await peer.send(connack)
        await hold(peer, n)

    async with run(refuse, loop_errors, protocol=protocol, connect_timeout=30) as (conn, _b):
        await conn.start()
        await until(lambda: counter(conn, "connect_failures") >= 2, 10)
        st = conn.status()
        assert st["state"] == state and text in (st["last_error"] or "")
        assert (counter(conn, "auth_failures") > 0) == (state == "auth refused")


@pytest.mark.asyncio
@pytest.mark.parametrize(
    ("protocol", "first", "text"),
    [
        ("5", b"\x20\x01\x00", "malformed CONNACK"),  # too short
        ("3.1.1", b"\x20\x02\x07\x00", "malformed CONNACK"),  # reserved flags set
        ("5", b"\x20\x02\x00\x00", "malformed CONNACK"),  # MQTT 5 without its properties
        ("5", b"\x20\x05\x00\x00\x02\xff\x00", "CONNACK with malformed properties"),
        ("5", publish_packet("t/x", b"early", props=b""), "unexpected PUBLISH packet before"),
        ("3.1.1", publish_packet("t/x", b"early", qos=1, mid=3), "unexpected PUBLISH packet"),
        ("5", b"\x90\x04\x00\x01\x00\x00", "unexpected SUBACK packet before CONNACK"),
        ("5", b"\xc0\x00", "unexpected PINGREQ packet before CONNACK"),
        ("3.1.1", b"\x00\x00", "unexpected reserved (0) packet before CONNACK"),
        ("5", b"\x40\x02\x00\x01", "unexpected PUBACK packet before CONNACK"),
    ],
)
async def test_garbage_or_a_wrong_packet_instead_of_connack(
    loop_errors: list[dict[str, Any]],
    caplog: pytest.LogCaptureFixture,
    protocol: str,
    first: bytes,
    text: str,
) -> None:
    """Used to be: ignored (gmqtt logged it at DEBUG) until connect_timeout, or worse, a
    PUBLISH before CONNACK handed to the handlers of a session never accepted."""

    async def garbage(peer: Peer, n: int) -> None:
        await peer.send(first)
        await hold(peer, n)

    got = Collect()
    async with run(garbage, loop_errors, protocol=protocol, connect_timeout=30) as (conn, broker):
        conn.subscribe("t/#", 1, got)
        await conn.start()
        await until(lambda: counter(conn, "protocol_errors") >= 3, 10)
        st = conn.status()
        assert st["state"] == "protocol error" and not st["connected"]
        assert text in (st["last_error"] or "")
        assert got.got == []
        assert warnings_with(caplog, text) == 1  # once per burst
        assert broker.connects >= 3


# -- after CONNACK: what the broker sends -------------------------------------------------
async def subscribed(peer: Peer, v5: bool) -> int:
    """Read the client's SUBSCRIBE and grant it; its packet id."""
    body = await peer.expect(0x80)
    mid: int = struct.unpack("!H", body[:2])[0]
    await peer.send(
        b"\x90\x04" + body[:2] + b"\x00\x01" if v5 else b"\x90\x03" + body[:2] + b"\x01"
    )
    return mid


@pytest.mark.asyncio
@pytest.mark.parametrize("protocol", ["5", "3.1.1"])
async def test_a_topic_never_subscribed_is_unrouted_and_acked(
    loop_errors: list[dict[str, Any]], protocol: str
) -> None:
    v5 = protocol == "5"
    pubacks: list[bytes] = []

    async def stray(peer: Peer, n: int) -> None:
        await peer.send(CONNACK_V5 if v5 else CONNACK_V311)
        await subscribed(peer, v5)
        props = b"" if v5 else None
        await peer.send(publish_packet("else/where", b"x", qos=1, mid=7, props=props))
        pubacks.append(await peer.expect(0x40))
        await hold(peer, n)

    got = Collect()
    async with run(stray, loop_errors, protocol=protocol) as (conn, broker):
        conn.subscribe("mine/#", 1, got)
        await conn.start()
        await until(lambda: bool(pubacks), 10)
        assert pubacks == [b"\x00\x07"]
        assert counter(conn, "unrouted") == 1 and got.got == []
        assert conn.status()["connected"] and broker.connects == 1


def bad_publish(topic: bytes, qos: int, mid: int, sub_id: int | None) -> bytes:
    """A PUBLISH with a topic given as raw bytes (``publish_packet`` encodes str)."""
    body = struct.pack("!H", len(topic)) + topic
    if qos:
        body += struct.pack("!H", mid)
    if sub_id is not None:
        body += bytes([2, 0x0B, sub_id])
    return bytes([0x30 | qos << 1, len(body) + 1]) + body + b"!"


@pytest.mark.asyncio
@pytest.mark.parametrize("protocol", ["5", "3.1.1"])
@pytest.mark.parametrize(
    "case",
    [
        (b"t/\xff\xfe", 0, 0, "not UTF-8"),
        (b"t/\xc3", 1, 5, "not UTF-8"),
        (b"t/+/x", 0, 0, "wildcard or NUL"),
        (b"t/#", 1, 5, "wildcard or NUL"),
        (b"t/a\x00b", 1, 5, "wildcard or NUL"),
        (b"t/ok", 1, 0, "packet id 0"),
    ],
)
async def test_a_publish_no_broker_may_send_ends_the_session(
    loop_errors: list[dict[str, Any]],
    caplog: pytest.LogCaptureFixture,
    protocol: str,
    case: tuple[bytes, int, int, str],
) -> None:
    """Used to be: an invalid UTF-8 topic raised inside gmqtt (swallowed, a QoS 1 message
    never acked, nothing counted); a wildcard or NUL topic reached the handlers; packet
    id 0 was delivered and acked as if valid."""
    topic, qos, mid, text = case
    v5 = protocol == "5"

    async def hostile(peer: Peer, n: int) -> None:
        await peer.send(CONNACK_V5 if v5 else CONNACK_V311)
        await subscribed(peer, v5)
        await peer.send(bad_publish(topic, qos, mid, 1 if v5 else None))
        await hold(peer, n)

    got = Collect()
    async with run(hostile, loop_errors, protocol=protocol) as (conn, broker):
        conn.subscribe("t/#", 1, got)  # subscription identifier 1 (MQTT 5)
        await conn.start()
        await until(lambda: counter(conn, "protocol_errors") >= 2, 10)
        assert got.got == [] and counter(conn, "rx") == 0
        assert text in (conn.status()["last_error"] or "")
        assert warnings_with(caplog, text) == 1
        assert broker.connects >= 2  # and it keeps reconnecting


@pytest.mark.asyncio
async def test_topic_aliases_the_client_never_allowed(loop_errors: list[dict[str, Any]]) -> None:
    """The client allows no alias; one used before being set (gmqtt dropped it silently),
    alias 0, or more aliases than a small bound (gmqtt kept every one, each naming up to a
    64 KB topic) end the session, counted."""
    cases = [
        publish_packet("", b"never set", props=bytes([0x23, 0, 3, 0x0B, 1])),
        publish_packet("t/zero", b"alias 0", props=bytes([0x23, 0, 0, 0x0B, 1])),
        b"".join(
            publish_packet(f"t/{a}", b"many", props=bytes([0x23, 0, a, 0x0B, 1]))
            for a in range(1, mqtt_mod._MAX_ALIASES + 2)
        ),
    ]

    async def hostile(peer: Peer, n: int) -> None:
        await peer.send(CONNACK_V5)
        await subscribed(peer, True)
        await peer.send(cases[(n - 1) % len(cases)])
        await hold(peer, n)

    got = Collect()
    async with run(hostile, loop_errors) as (conn, broker):
        conn.subscribe("t/#", 0, got)
        await conn.start()
        await until(lambda: counter(conn, "protocol_errors") >= len(cases), 10)
        assert not any(m.payload in (b"never set", b"alias 0") for m in got.got)
        assert len(got.got) <= len(cases) * mqtt_mod._MAX_ALIASES  # the bound held
        assert broker.connects >= len(cases)


@pytest.mark.asyncio
async def test_acks_for_packet_ids_never_used_are_counted_and_ignored(
    loop_errors: list[dict[str, Any]],
) -> None:
    """PUBACK/PUBREC/PUBCOMP/SUBACK for ids the client never used: counted, the session
    stays up, no PUBREL answers a stray PUBREC (gmqtt sent one, and kept it), no SUBACK
    frees the id of a publish in flight; real acks keep working."""
    seen: list[tuple[int, bytes]] = []
    stray_sent = asyncio.Event()

    async def liar(peer: Peer, n: int) -> None:
        await peer.send(CONNACK_V5)
        await subscribed(peer, True)
        await peer.send(b"\x40\x02\x03\xe7" + b"\x50\x02\x03\xe6" + b"\x70\x02\x03\xe5")
        await peer.send(b"\x90\x04\x03\xe4\x00\x00")
        stray_sent.set()
        while True:
            first, body = await peer.read_packet()
            seen.append((first, body))
            if first & 0xF0 == 0x30 and first & 6:
                at = 2 + struct.unpack("!H", body[:2])[0]
                await peer.send(b"\x40\x02" + body[at : at + 2])

    async with run(liar, loop_errors) as (conn, _b):
        conn.subscribe("t/#", 1, Collect())
        await conn.start()
        await stray_sent.wait()
        await until(lambda: counter(conn, "unexpected_acks") == 4, 10)
        confirms = [conn.publish("out", b"%d" % i, qos=1, confirm=True) for i in range(5)]
        await asyncio.wait_for(asyncio.gather(*[c for c in confirms if c is not None]), 10)
        st = conn.status()
        assert st["connected"] and st["inflight"] == 0 and st["counters"]["acked"] == 5
        assert st["counters"]["subscribe_refused"] == 0
        assert not any(first & 0xF0 == 0x60 for first, _ in seen), "PUBREL for a stray PUBREC"


@pytest.mark.asyncio
@pytest.mark.parametrize("codes", [b"", b"\x01\x80", b"\x80\x80\x80"])
async def test_a_suback_with_the_wrong_number_of_codes(
    loop_errors: list[dict[str, Any]], codes: bytes
) -> None:
    """One filter per SUBSCRIBE: a SUBACK with none (was taken as granted) or several
    codes (extras were counted as refusals) breaks MQTT; the next session subscribes
    again and is granted."""

    async def miscount(peer: Peer, n: int) -> None:
        await peer.send(CONNACK_V5)
        body = await peer.expect(0x80)
        if n == 1:
            await peer.send(bytes([0x90, 3 + len(codes)]) + body[:2] + b"\x00" + codes)
        else:
            await peer.send(b"\x90\x04" + body[:2] + b"\x00\x01")
        await hold(peer, n)

    async with run(miscount, loop_errors) as (conn, broker):
        conn.subscribe("t/#", 1, Collect())
        await conn.start()
        await until(lambda: broker.connects >= 2 and conn.status()["connected"], 10)
        await conn.wait_subscribed(5)
        assert counter(conn, "protocol_errors") == 1
        assert counter(conn, "subscribe_refused") == 0
        assert "SUBACK with" in (conn.status()["last_error"] or "")


@pytest.mark.asyncio
async def test_a_broker_over_the_receive_maximum(
    loop_errors: list[dict[str, Any]], monkeypatch: pytest.MonkeyPatch
) -> None:
    """QoS 1 messages whose async handlers have not finished hold their acks (and tasks):
    a broker that keeps sending past the receive maximum (65535, here lowered to 20) grew
    them without bound; now the session ends, counted, and the next one works."""
    monkeypatch.setattr(mqtt_connection, "_RECEIVE_MAX", 20)
    release = asyncio.Event()

    async def slow(msg: Any) -> None:
        await release.wait()

    async def flood(peer: Peer, n: int) -> None:
        await peer.send(CONNACK_V5)
        await subscribed(peer, True)
        if n == 1:
            for mid in range(1, 31):
                await peer.send(publish_packet("t/x", b"m", qos=1, mid=mid, props=b""))
        await hold(peer, n)

    async with run(flood, loop_errors) as (conn, broker):
        conn.subscribe("t/#", 1, slow)
        await conn.start()
        await until(lambda: counter(conn, "protocol_errors") == 1, 10)
        assert "over 20 QoS>0 messages sent unacknowledged" in (conn.status()["last_error"] or "")
        assert counter(conn, "rx") <= 21
        await until(lambda: broker.connects == 2 and conn.status()["connected"], 10)
        release.set()


# -- sizes and memory ---------------------------------------------------------------------
@pytest.mark.asyncio
@pytest.mark.parametrize("protocol", ["5", "3.1.1"])
async def test_a_huge_publish_is_skipped_unread_and_acked(
    loop_errors: list[dict[str, Any]], protocol: str
) -> None:
    """A QoS 1 PUBLISH declared at 256 MB, 24 MB of it sent, then the broker goes: the
    bytes are skipped as they arrive (they were gathered, with a copy of all so far at each
    read: 24 MB held, gigabytes copied). On the next session one of 8 MB comes whole:
    skipped, counted, acked; what follows it is read as usual."""
    v5 = protocol == "5"
    props = b"" if v5 else None
    chunk = b"\xaa" * (1024 * 1024)
    pubacks: list[bytes] = []
    sent = asyncio.Event()

    async def flood(peer: Peer, n: int) -> None:
        await peer.send(CONNACK_V5 if v5 else CONNACK_V311)
        await subscribed(peer, v5)
        head = struct.pack("!H", 5) + b"t/big" + struct.pack("!H", 8 + n) + (b"\0" if v5 else b"")
        if n == 1:
            await peer.send(b"\x32\xff\xff\xff\x7f" + head)  # 268435455 bytes
            for _ in range(24):
                await peer.send(chunk)
            sent.set()
            return
        size = 8 * len(chunk) + len(head)
        await peer.send(b"\x32" + varint(size))
        await peer.send(head)
        for _ in range(8):
            await peer.send(chunk)
        await peer.send(publish_packet("t/small", b"after", qos=1, mid=11, props=props))
        while len(pubacks) < 2:
            pubacks.append(await peer.expect(0x40))
        await hold(peer, n)

    got = Collect()
    async with run(flood, loop_errors, protocol=protocol, max_payload_bytes=4096) as (conn, broker):
        conn.subscribe("t/#", 1, got)
        tracemalloc.start()
        try:
            await conn.start()
            await asyncio.wait_for(sent.wait(), 30)
            peak = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
        assert peak < 8 * 1024 * 1024, f"{peak} bytes held while 24 MB arrived"
        await until(lambda: len(pubacks) == 2, 30)
        assert pubacks == [b"\x00\x0a", b"\x00\x0b"]
        assert [m.payload for m in got.got] == [b"after"]
        assert counter(conn, "oversize_dropped") == 1
        assert conn.status()["connected"] and broker.connects == 2


@pytest.mark.asyncio
async def test_a_huge_packet_that_is_not_a_publish_ends_the_session(
    loop_errors: list[dict[str, Any]],
) -> None:
    async def huge_suback(peer: Peer, n: int) -> None:
        await peer.send(CONNACK_V5)
        await peer.send(b"\x90\xff\xff\xff\x7f" + b"\x00" * 65536)
        await hold(peer, n)

    async with run(huge_suback, loop_errors) as (conn, broker):
        await conn.start()
        await until(lambda: counter(conn, "protocol_errors") >= 2, 10)
        assert "SUBACK of 268435455 bytes" in (conn.status()["last_error"] or "")
        assert broker.connects >= 2


def test_a_large_packet_is_gathered_without_copying_at_each_read() -> None:
    """Below the bound, a large packet cut in many reads was copied whole at each one
    (quadratic); it is now appended in place and decoded once complete."""
    from test_mqtt_parser import Rig

    loop = asyncio.new_event_loop()
    try:
        rig = Rig(loop, v5=False)
        payload = bytes(range(256)) * 4096  # 1 MB
        data = publish_packet("big", payload)
        for i in range(0, len(data), 1000):
            rig.proto.data_received(data[i : i + 1000])
            if i and i + 1000 < len(data):
                assert isinstance(rig.proto.framer.rx, bytearray)
        assert [m.payload for m, _, _ in rig.got] == [payload]
        assert rig.proto.framer.rx == b"" and rig.proto.framer.need == 0
    finally:
        loop.close()


# -- a broker that stops reading, stays silent, or keeps dropping us ----------------------
@pytest.mark.asyncio
async def test_a_broker_that_reads_nothing(loop_errors: list[dict[str, Any]]) -> None:
    """The first broker accepts and then reads nothing: QoS 0 is dropped (counted) once the
    write buffer is over its cap, QoS 1 waits in the window and the spool; the silence
    ends the session after two keepalives (gmqtt's graceful close waited for the unsent
    buffer forever: the session was never seen as lost). The next broker gets every QoS 1
    message."""
    got_qos1: list[bytes] = []
    stalled = asyncio.Event()

    async def script(peer: Peer, n: int) -> None:
        await peer.send(CONNACK_V5)
        if n == 1:
            stalled.set()
            await asyncio.sleep(3600)  # reads nothing, says nothing
        while True:
            first, body = await peer.read_packet()
            if first & 0xF0 == 0x30 and first & 6:
                tlen = struct.unpack("!H", body[:2])[0]
                at = 2 + tlen
                await peer.send(b"\x40\x02" + body[at : at + 2])
                if body[2 : 2 + tlen] == b"q1":
                    got_qos1.append(body[at + 3 :])
            elif first & 0xF0 == 0xC0:
                await peer.send(b"\xd0\x00")

    big = b"x" * 100_000
    async with run(
        script, loop_errors, keepalive=1, max_write_buffer_bytes=1024, max_inflight=10
    ) as (conn, broker):
        await conn.start()
        await conn.wait_connected(5)
        await stalled.wait()
        session = conn._session
        assert session is not None
        for _ in range(300):  # 30 MB: more than the kernel's socket buffers take
            conn.publish("q0", big, qos=0)
            await asyncio.sleep(0)
        assert counter(conn, "qos0_dropped_backpressure") > 0
        assert session.write_buffer_size() < 8 * 1024 * 1024
        for i in range(50):
            conn.publish("q1", b"%d" % i, qos=1)
        st = conn.status()
        assert st["inflight"] <= 10 and st["spool"] + st["inflight"] == 50
        await until(lambda: counter(conn, "keepalive_timeouts") >= 1, 10)
        assert "keepalive" in (conn.status()["last_error"] or "")
        await until(lambda: len(got_qos1) == 50, 15)
        assert got_qos1 == [b"%d" % i for i in range(50)]
        assert broker.connects == 2


@pytest.mark.asyncio
async def test_a_broker_that_talks_but_reads_nothing(loop_errors: list[dict[str, Any]]) -> None:
    """The broker keeps sending (so the link never looks silent) but reads nothing: what
    we write, and the acks we owe it, piled up unsent for as long as it kept talking. Now
    a write buffer that has not moved for two keepalives ends the session."""

    async def chatter(peer: Peer, n: int) -> None:
        await peer.send(CONNACK_V5)
        if n > 1:
            await hold(peer, n)
        while True:
            await peer.send(publish_packet("t/x", b"hi", props=b""))
            await asyncio.sleep(0.05)

    big = b"x" * 100_000
    async with run(chatter, loop_errors, keepalive=1, max_write_buffer_bytes=1024) as (
        conn,
        broker,
    ):
        conn.subscribe("t/#", 0, Collect())
        await conn.start()
        await conn.wait_connected(5)
        for _ in range(300):  # 30 MB: more than the kernel's socket buffers take
            conn.publish("q0", big, qos=0)
            await asyncio.sleep(0)
        assert counter(conn, "qos0_dropped_backpressure") > 0
        await until(lambda: counter(conn, "keepalive_timeouts") >= 1, 10)
        assert "the broker read nothing in 2 s" in (conn.status()["last_error"] or "")
        await until(lambda: broker.connects >= 2 and conn.status()["connected"], 10)


@pytest.mark.asyncio
@pytest.mark.parametrize("protocol", ["5", "3.1.1"])
async def test_no_pingresp_is_a_keepalive_timeout(
    loop_errors: list[dict[str, Any]], protocol: str
) -> None:
    """The broker reads (so nothing waits to be sent) but never answers PINGREQ: noticed
    after two keepalives, counted as such (it was reported as the broker closing the
    connection), reconnected."""
    pings = 0

    async def mute(peer: Peer, n: int) -> None:
        nonlocal pings
        await peer.send(CONNACK_V5 if protocol == "5" else CONNACK_V311)
        while True:
            first, _ = await peer.read_packet()
            pings += first == 0xC0

    async with run(mute, loop_errors, protocol=protocol, keepalive=1) as (conn, broker):
        await conn.start()
        await until(lambda: counter(conn, "keepalive_timeouts") >= 1, 10)
        assert pings >= 1
        assert "nothing from the broker in 2 s" in (conn.status()["last_error"] or "")
        assert counter(conn, "broker_disconnects") == 0
        await until(lambda: broker.connects >= 2, 10)


@pytest.mark.asyncio
async def test_a_broker_closing_after_each_connack_gets_a_growing_jittered_backoff(
    loop_errors: list[dict[str, Any]], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each connection is accepted and closed at once: every retry waits, twice as long
    as the one before up to reconnect_max, jittered in [delay/2, delay] (no busy loop)."""
    delays: list[tuple[float, float]] = []

    class Recorder:
        @staticmethod
        def uniform(a: float, b: float) -> float:
            delays.append((a, b))
            return random.uniform(a, b)

    monkeypatch.setattr(drivers_base, "random", Recorder)

    async def slam(peer: Peer, n: int) -> None:
        await peer.send(CONNACK_V5)

    async with run(slam, loop_errors, reconnect_min=0.01, reconnect_max=0.08) as (conn, broker):
        await conn.start()
        await until(lambda: len(delays) >= 7, 10)
        highs = [b for _, b in delays[:7]]
        assert highs == [0.01, 0.02, 0.04, 0.08, 0.08, 0.08, 0.08]
        assert all(a == b / 2 for a, b in delays)
        assert broker.connects <= len(delays) + 1
        assert counter(conn, "broker_disconnects") >= 5


@pytest.mark.asyncio
async def test_a_disconnect_with_a_reason_and_properties(loop_errors: list[dict[str, Any]]) -> None:
    reason = b"\x1f\x00\x09maintain!"  # reason string property

    async def busy(peer: Peer, n: int) -> None:
        await peer.send(CONNACK_V5)
        await peer.send(bytes([0xE0, 2 + len(reason), 0x89, len(reason)]) + reason)
        await hold(peer, n)

    async with run(busy, loop_errors) as (conn, broker):
        await conn.start()
        await until(lambda: counter(conn, "broker_disconnects") >= 2, 10)
        assert "server busy (0x89)" in (conn.status()["last_error"] or "")
        assert counter(conn, "protocol_errors") == 0
        assert broker.connects >= 2
