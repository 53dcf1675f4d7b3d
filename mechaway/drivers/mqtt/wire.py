"""The MQTT wire, pure: framing a byte stream into packets and the PUBLISH codec.

No I/O, no asyncio, no gmqtt: bytes in, packets and values out (tests drive it with
arbitrary streams cut anywhere). The gmqtt seam (``gmqtt_seam.py``) feeds it what the
socket reads and writes what it encodes; every other packet is left to gmqtt's parser.

Written for the hot path: at a few hundred messages a second each message arrives to cold
caches, where every Python call on its path costs a microsecond or two, so the framing
loop and the PUBLISH decoder are inline loops, not layers of small functions.
"""

from __future__ import annotations

import msgspec

__all__ = [
    "DISCONNECT_REASONS",
    "MALFORMED",
    "MAX_PACKET",
    "OVERSIZE",
    "PACKET_NAMES",
    "SKIPPED",
    "TAKEN_OVER",
    "Framer",
    "Incoming",
    "ack_packet",
    "decode_publish",
    "encode_topic",
    "fixed_header",
    "publish_packet",
]

#: a packet larger than this cannot be framed (MQTT's remaining length tops out at 256 MB)
MAX_PACKET = 268_435_455
#: a packet gathered across reads is kept in one growing bytearray past this size
GATHER_BYTES = 64 * 1024

#: ``Framer.feed`` events, in place of a packet's first byte (packets have 0..255)
#: an oversize PUBLISH was skipped unread: (SKIPPED, qos, packet id or 0)
SKIPPED = -1
#: a packet other than PUBLISH declared over ``max_packet``: (OVERSIZE, first byte, size)
OVERSIZE = -2
#: a remaining length of more than four bytes: nothing after it can be framed
MALFORMED = -3

#: packet types by their first byte's high nibble, for reports
PACKET_NAMES = {
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

#: MQTT 5 DISCONNECT reason codes a broker sends, in words
DISCONNECT_REASONS = {
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
TAKEN_OVER = 0x8E


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


# ---------------------------------------------------------------------------------------
# Encoding
# ---------------------------------------------------------------------------------------
def fixed_header(first: int, size: int) -> bytes:
    """An MQTT fixed header: the first byte and ``size`` as a variable byte integer."""
    if size < 0x80:
        return bytes((first, size))
    if size < 0x4000:
        return bytes((first, size & 0x7F | 0x80, size >> 7))
    if size > MAX_PACKET:
        raise ValueError(f"MQTT packet of {size} bytes: over 256 MB")
    out = bytearray((first,))
    while size:
        size, byte = divmod(size, 0x80)
        out.append(byte | 0x80 if size else byte)
    return bytes(out)


def encode_topic(topic: str, v5: bool) -> tuple[bytes, bytes]:
    """(length-prefixed topic, the same + QoS 0's empty property block under MQTT 5)."""
    raw = topic.encode("utf-8", "replace")
    prefixed = len(raw).to_bytes(2, "big") + raw
    return prefixed, prefixed + b"\0" if v5 else prefixed


def publish_packet(
    prefixed_topic: bytes, mid: int, payload: bytes, *, qos: int, retain: bool, v5: bool
) -> bytes:
    """A QoS>=1 PUBLISH (QoS 0 ones are written straight into the cork buffer)."""
    props = b"\0" if v5 else b""
    size = len(prefixed_topic) + 2 + len(props) + len(payload)
    return b"".join(
        (
            fixed_header(0x30 | qos << 1 | retain, size),
            prefixed_topic,
            mid.to_bytes(2, "big"),
            props,
            payload,
        )
    )


def ack_packet(qos: int, mid: int) -> bytes:
    """PUBACK (QoS 1) or PUBREC (QoS 2); success needs no reason code."""
    return bytes((0x40 if qos == 1 else 0x50, 2, mid >> 8, mid & 0xFF))


# ---------------------------------------------------------------------------------------
# Decoding
# ---------------------------------------------------------------------------------------
class Framer:
    """Splits a byte stream into MQTT packets, across reads cut anywhere.

    ``feed(data)`` returns ``(buf, packets)``: each packet ``(first byte, start, stop)``
    with its body ``buf[start:stop]``, or an event (``SKIPPED``, ``OVERSIZE``,
    ``MALFORMED`` in place of the first byte). A packet declared larger than
    ``max_packet`` is never gathered in memory: a PUBLISH is skipped as it arrives (its
    qos and packet id read from its start, when they are in it), anything else is
    reported and the rest of the read dropped (the caller ends the session).
    """

    __slots__ = ("_need", "_skip", "_skipped", "max_packet", "rx")

    def __init__(self, max_packet: int = MAX_PACKET) -> None:
        self.max_packet = max_packet
        #: the start of a packet not yet complete (a bytearray while ``_need`` is set)
        self.rx: bytes | bytearray = b""
        self._need = 0  # the size of the large packet gathered in ``rx`` (a bytearray)
        self._skip = 0  # bytes of an oversize PUBLISH still to be discarded
        self._skipped: tuple[int, int] = (0, 0)  # its (qos, packet id or 0)

    @property
    def need(self) -> int:
        return self._need

    def feed(self, data: bytes) -> tuple[bytes, list[tuple[int, int, int]]]:
        out: list[tuple[int, int, int]] = []
        if self._skip:
            n = self._skip
            if len(data) < n:
                self._skip = n - len(data)
                return b"", out
            self._skip = 0
            out.append((SKIPPED, *self._skipped))
            data = data[n:]
        rx = self.rx
        if not rx:
            buf = data
        elif self._need:  # a large packet: gathered in place, not copied at each read
            rx += data
            if len(rx) < self._need:
                return b"", out
            self._need = 0
            buf = bytes(rx)
        else:  # bytes here (a bytearray only while _need is set)
            buf = rx + data  # type: ignore[assignment]
        pos, end, need = 0, len(buf), 0
        append = out.append
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
                if shift > 21:  # a length of more than four bytes
                    append((MALFORMED, pos, end))
                    self.rx = b""
                    return buf, out
            stop = i + size
            if stop > end:
                if size > self.max_packet:
                    if first & 0xF0 != 0x30:
                        append((OVERSIZE, first, size))
                    else:
                        self._skip_publish(first, buf, i, stop, end)
                    pos = end
                else:
                    need = stop - pos
                break
            append((first, i, stop))
            pos = stop
        if pos >= end:
            self.rx = b""
        elif need > GATHER_BYTES:
            self.rx = bytearray(buf[pos:])
            self._need = need
        else:
            self.rx = buf[pos:]
        return buf, out

    def _skip_publish(self, first: int, buf: bytes, i: int, stop: int, end: int) -> None:
        """Skip an oversize PUBLISH (``buf[i:end]`` its start, ``stop`` its end, past
        ``end``): reported as ``SKIPPED`` once its last byte went by."""
        qos = first >> 1 & 3
        mid = 0
        if qos and end - i >= 2:
            at = i + 2 + (buf[i] << 8 | buf[i + 1])
            if at + 2 <= end:
                mid = buf[at] << 8 | buf[at + 1]
        self._skip = stop - end
        self._skipped = (qos, mid)


def decode_publish(
    first: int, buf: bytes, i: int, stop: int, v5: bool
) -> tuple[Incoming, int | None, list[int] | None] | None:
    """One PUBLISH (``buf[i:stop]`` is its body) as (message, packet id, subscription
    identifiers), or None for what this decoder leaves to gmqtt: a topic alias, properties
    other than subscription identifiers, anything malformed. Never reads past ``stop``."""
    if stop - i < 3:
        return None
    p = tend = i + 2 + (buf[i] << 8 | buf[i + 1])
    if tend == i + 2 or tend > stop:  # empty topic (a topic alias), or overrun
        return None
    qos = first >> 1 & 3
    mid = None
    if qos:
        if qos == 3 or p + 2 > stop:
            return None
        mid = buf[p] << 8 | buf[p + 1]
        if not mid:  # a protocol error: gmqtt's path reports it
            return None
        p += 2
    sub_ids: list[int] | None = None
    if v5:
        if p >= stop:
            return None
        plen = buf[p]
        p += 1
        if plen:
            if plen & 0x80 or p + plen > stop:
                return None
            q, p = p, p + plen
            sub_ids = []
            while q < p:  # subscription identifiers only (0x0B, a variable int)
                if buf[q] != 0x0B:
                    return None
                q += 1
                value = shift = 0
                while True:
                    if q >= p or shift > 21:
                        return None
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
        return None
    return Incoming(topic, buf[p:stop], qos, bool(first & 1), bool(first & 8)), mid, sub_ids
