"""The driver's own PUBLISH decoder (the fast path in ``data_received``), driven without a
socket: it reads bytes from the broker, so it must take any byte stream, cut anywhere,
without raising, and decode every well-formed PUBLISH exactly."""

from __future__ import annotations

import asyncio
import struct
from collections.abc import Iterator
from typing import Any

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from test_mqtt_driver import publish_packet, varint

from mechaway.drivers.mqtt import Incoming, _gmqtt


class FakeHandler:
    def __init__(self) -> None:
        self._connection: Any = None  # gmqtt's handler attribute the protocol checks


class FakeConnection:
    """What the protocol touches of gmqtt's MQTTConnection: packets it leaves to gmqtt."""

    def __init__(self, events: list[tuple[Any, ...]]) -> None:
        self._handler = FakeHandler()
        self._handler._connection = self
        self._last_data_in = 0.0
        self._last_data_out = 0.0
        self.events = events

    def put_package(self, pkg: Any) -> None:
        self.events.append(("gmqtt", pkg.cmd, bytes(pkg.data)))


class FakeTransport:
    def __init__(self) -> None:
        self.aborted = 0
        self.writes: list[bytes] = []

    def abort(self) -> None:
        self.aborted += 1

    def is_closing(self) -> bool:
        return False

    def write(self, data: bytes) -> None:
        self.writes.append(bytes(data))


class Rig:
    """A protocol instance wired to fakes. ``events``, in order: ("fast", Incoming, mid,
    sub_ids) for what the fast path decoded, ("gmqtt", first byte, body) for packets
    handed on to gmqtt's parser."""

    def __init__(self, loop: asyncio.AbstractEventLoop, v5: bool) -> None:
        from gmqtt.mqtt.handler import IdGenerator
        from gmqtt.mqtt.protocol import ConnectionState

        protocol_class = _gmqtt()[0].protocol_class
        self.events: list[tuple[Any, ...]] = []
        self.proto = protocol_class(
            loop=loop,
            connection_state=ConnectionState(),
            id_generator=IdGenerator(),
            deliver=lambda m, mid, ids: self.events.append(("fast", m, mid, ids)),
        )
        self.conn = FakeConnection(self.events)
        self.transport = FakeTransport()
        self.proto._connection = self.conn
        self.proto._transport = self.transport
        self.proto.v5 = v5

    @property
    def got(self) -> list[tuple[Incoming, int | None, list[int] | None]]:
        return [(e[1], e[2], e[3]) for e in self.events if e[0] == "fast"]

    def feed(self, data: bytes, cuts: list[int]) -> None:
        """``data`` in chunks cut at ``cuts``; nothing more after an abort (a real
        transport delivers nothing after it either)."""
        pos = 0
        for cut in [*sorted({c % (len(data) + 1) for c in cuts}), len(data)]:
            if cut > pos and not self.transport.aborted:
                self.proto.data_received(data[pos:cut])
                pos = cut


def reference_frames(data: bytes) -> tuple[list[tuple[int, bytes]], bool]:
    """MQTT framing written out plainly: (first byte, body) of each complete packet, and
    whether the stream then holds a malformed length (a 5th length byte)."""
    out: list[tuple[int, bytes]] = []
    i = 0
    while len(data) - i >= 2:
        j, size = i + 1, 0
        for k in range(4):
            if j >= len(data):
                return out, False
            size |= (data[j] & 0x7F) << (7 * k)
            j += 1
            if data[j - 1] < 0x80:
                break
        else:
            return out, True
        if j + size > len(data):
            return out, False
        out.append((data[i], data[j : j + size]))
        i = j + size
    return out, False


@pytest.fixture(scope="module")
def loop() -> Iterator[asyncio.AbstractEventLoop]:
    lp = asyncio.new_event_loop()
    yield lp
    lp.close()


# topics as brokers send them: UTF-8 without NUL, not empty (an empty one is an alias)
topics = st.text(
    st.characters(blacklist_categories=("Cs",), blacklist_characters="\0"),
    min_size=1,
    max_size=40,
)
sub_ids = st.lists(st.integers(1, 268_435_455), max_size=3)


@st.composite
def publishes(draw: st.DrawFn, v5: bool) -> tuple[bytes, tuple[Any, ...]]:
    """(packet bytes, (topic, payload, qos, retain, dup, mid, sub ids)) of one PUBLISH."""
    topic = draw(topics)
    payload = draw(st.binary(max_size=300))
    qos = draw(st.integers(0, 2))
    mid = draw(st.integers(1, 65535)) if qos else 0
    retain, dup = draw(st.booleans()), draw(st.booleans()) if qos else False
    ids = draw(sub_ids) if v5 else []
    props = b"".join(b"\x0b" + varint(i) for i in ids) if v5 else None
    packet = publish_packet(topic, payload, qos=qos, mid=mid, retain=retain, dup=dup, props=props)
    return packet, (topic, payload, qos, retain, dup, mid or None, ids or None)


@st.composite
def streams(draw: st.DrawFn) -> tuple[bool, list[tuple[bytes, tuple[Any, ...]]], list[int]]:
    v5 = draw(st.booleans())
    packets = draw(st.lists(publishes(v5), min_size=1, max_size=8))
    cuts = draw(st.lists(st.integers(0, 10_000), max_size=12))
    return v5, packets, cuts


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(streams())
def test_publishes_cut_anywhere_decode_exactly(
    loop: asyncio.AbstractEventLoop,
    case: tuple[bool, list[tuple[bytes, tuple[Any, ...]]], list[int]],
) -> None:
    v5, packets, cuts = case
    rig = Rig(loop, v5)
    rig.feed(b"".join(p for p, _ in packets), cuts)
    decoded = [
        (m.topic, m.payload, m.qos, m.retain, m.dup, mid, ids or None) for m, mid, ids in rig.got
    ]
    assert decoded == [want for _, want in packets]
    assert [e for e in rig.events if e[0] != "fast"] == [], "a PUBLISH left the fast path"
    assert rig.transport.aborted == 0
    assert rig.proto.framer.rx == b"", "bytes left over after whole packets"


@st.composite
def damaged_streams(draw: st.DrawFn) -> tuple[bool, bytes, list[int]]:
    """Well-formed PUBLISH streams with a few bytes overwritten or nudged by one or two:
    lengths that overrun, flags that lie, topics that are not UTF-8; closer to a broken
    peer than noise is."""
    v5, packets, cuts = draw(streams())
    data = bytearray(b"".join(p for p, _ in packets))
    for _ in range(draw(st.integers(1, 4))):
        at = draw(st.integers(0, len(data) - 1))
        if draw(st.booleans()):  # off by a little: the lengths that overrun by one
            data[at] = (data[at] + draw(st.integers(-2, 2))) % 256
        else:
            data[at] = draw(st.integers(0, 255))
    return v5, bytes(data), cuts


def check_garbage_taken(rig: Rig, v5: bool, data: bytes) -> None:
    """Each complete packet of the stream, in order, either decoded by the fast path into
    exactly its fields, or handed to gmqtt whole; a malformed length aborts the link."""
    frames, malformed = reference_frames(data)
    assert rig.transport.aborted == int(malformed)
    assert len(rig.events) == len(frames)
    for event, (first, body) in zip(rig.events, frames, strict=True):
        if event[0] == "gmqtt":
            assert event[1:] == (first, body)
            continue
        _, m, mid, ids = event
        assert first & 0xF0 == 0x30, "a packet that is no PUBLISH was decoded as one"
        assert (m.qos, m.retain, m.dup) == (first >> 1 & 3, bool(first & 1), bool(first & 8))
        assert (mid is None) == (m.qos == 0)
        raw = m.topic.encode()
        head = struct.pack("!H", len(raw)) + raw
        head += struct.pack("!H", mid) if mid is not None else b""
        if v5:  # then the property block: subscription identifiers only
            props = body[len(head) : len(body) - len(m.payload)]
            assert body == head + props + m.payload
            assert props[0] == len(props) - 1  # a one-byte block length
            assert decode_sub_ids(props[1:]) == (ids or [])
        else:
            assert ids is None
            assert body == head + m.payload


def decode_sub_ids(block: bytes) -> list[int]:
    """Subscription identifiers (0x0B + variable byte integer) of a property block."""
    out, i = [], 0
    while i < len(block):
        assert block[i] == 0x0B, "a property other than a subscription identifier"
        i += 1
        value = shift = 0
        while True:
            value |= (block[i] & 0x7F) << shift
            i += 1
            if block[i - 1] < 0x80:
                break
            shift += 7
        out.append(value)
    return out


@settings(max_examples=500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.booleans(), st.binary(max_size=400), st.lists(st.integers(0, 500), max_size=8))
def test_any_byte_stream_is_taken_without_raising(
    loop: asyncio.AbstractEventLoop, v5: bool, data: bytes, cuts: list[int]
) -> None:
    """Garbage from the socket: decoded, left to gmqtt, or the link aborted; never an
    exception out of ``data_received``, never a read past a packet's end."""
    rig = Rig(loop, v5)
    rig.feed(data, cuts)
    check_garbage_taken(rig, v5, data)


@settings(max_examples=500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(damaged_streams())
# lengths that overrun the packet by exactly one byte, followed by another packet: a
# topic length (MQTT 3.1.1) and a property block length (MQTT 5)
@example((False, bytes([0x30, 3, 0, 2, 0x61, 0x30, 3, 0, 1, 0x62]), []))
@example((True, bytes([0x30, 6, 0, 1, 0x61, 3, 0x0B, 0x81, 0x01, 0x00]), [7]))
def test_damaged_publishes_are_taken_without_raising(
    loop: asyncio.AbstractEventLoop, case: tuple[bool, bytes, list[int]]
) -> None:
    v5, data, cuts = case
    rig = Rig(loop, v5)
    rig.feed(data, cuts)
    check_garbage_taken(rig, v5, data)


def test_a_malformed_length_aborts_and_keeps_nothing(loop: asyncio.AbstractEventLoop) -> None:
    rig = Rig(loop, v5=False)
    rig.feed(b"\x30\xff\xff\xff\xff\x01" + publish_packet("a", b"x"), [])
    assert rig.transport.aborted == 1
    assert rig.got == [] and rig.proto.framer.rx == b""


def test_publish_with_other_properties_goes_to_gmqtt(loop: asyncio.AbstractEventLoop) -> None:
    """MQTT 5 properties other than subscription identifiers (here a user property) are
    gmqtt's to decode: the packet is handed on whole."""
    rig = Rig(loop, v5=True)
    user = b"\x26" + struct.pack("!H", 1) + b"k" + struct.pack("!H", 1) + b"v"
    packet = publish_packet("t/1", b"body", props=user)
    rig.feed(packet, [3])
    assert rig.got == []
    assert rig.events == [("gmqtt", 0x30, packet[2:])]
