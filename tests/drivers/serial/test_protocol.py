"""The Python side of the bridge protocol against the shared vectors, and hypothesis."""

from __future__ import annotations

import json
import pathlib
from typing import Any

import msgpack
import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mechaway.drivers.serial.protocol import (
    CobsFramer,
    FrameError,
    LineFramer,
    ProtocolError,
    cobs_decode,
    cobs_encode,
    crc16,
    decode_message,
    encode_frame,
    encode_message,
    make_framer,
    validate_message,
)

VECTORS = json.loads(
    (pathlib.Path(__file__).resolve().parents[3] / "firmware-bridges" / "test-vectors.json")
    .read_text()
)
DECODE = VECTORS["decode"]
ENCODE = VECTORS["encode"]


def frames_as_vector(items: list[bytes | FrameError]) -> list[dict[str, str]]:
    return [
        {"error": item.code} if isinstance(item, FrameError) else {"frame": item.hex()}
        for item in items
    ]


def messages_as_vector(framing: str, items: list[bytes | FrameError]) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for item in items:
        if isinstance(item, FrameError):
            out.append({"error": item.code})
            continue
        try:
            out.append({"msg": decode_message(framing, item)})
        except ProtocolError as err:
            out.append({"error": err.code})
    return out


def test_vectors_cover_both_framings_and_every_error_code() -> None:
    codes = {m["error"] for v in DECODE for m in v["messages"] if "error" in m}
    assert codes == {"oversize", "cobs", "short", "crc", "msgpack", "utf8", "json",
                     "schema", "version"}
    assert {v["framing"] for v in DECODE} == {"line", "cobs"}


@pytest.mark.parametrize("vec", VECTORS["crc"], ids=lambda v: v["in"][:16] or "empty")
def test_crc_vectors(vec: dict[str, Any]) -> None:
    assert crc16(bytes.fromhex(vec["in"])) == vec["crc"]


def test_crc_check_value() -> None:
    assert crc16(b"123456789") == 0x29B1


@pytest.mark.parametrize("vec", DECODE, ids=lambda v: v["name"])
def test_decode_vectors_whole(vec: dict[str, Any]) -> None:
    framer = make_framer(vec["framing"], vec["max_frame"])
    items = framer.feed(bytes.fromhex(vec["in"]))
    assert frames_as_vector(items) == vec["frames"]
    assert messages_as_vector(vec["framing"], items) == vec["messages"]


@pytest.mark.parametrize("vec", DECODE, ids=lambda v: v["name"])
def test_decode_vectors_byte_by_byte(vec: dict[str, Any]) -> None:
    framer = make_framer(vec["framing"], vec["max_frame"])
    items: list[bytes | FrameError] = []
    for byte in bytes.fromhex(vec["in"]):
        items += framer.feed(bytes([byte]))
    assert frames_as_vector(items) == vec["frames"]


@pytest.mark.parametrize("vec", ENCODE, ids=lambda v: v["name"])
def test_encode_vectors(vec: dict[str, Any]) -> None:
    msg = vec["msg"]
    has_float = any(isinstance(x, float) for x in msg.get("values", {}).values())
    for framing in ("line", "cobs"):
        wire = bytes.fromhex(vec[framing])
        # what the vector's bytes decode to
        items = make_framer(framing).feed(wire)
        assert len(items) == 1 and isinstance(items[0], bytes)
        assert decode_message(framing, items[0]) == msg
        # what we encode: the same bytes (floats: the vectors use float32, we float64)
        ours = encode_message(framing, msg)
        if framing == "line" or not has_float:
            assert ours == wire, framing
        assert decode_message(framing, make_framer(framing).feed(ours)[0]) == msg  # type: ignore[arg-type]


def test_line_oversize_across_reads_is_one_error_and_drops_to_newline() -> None:
    framer = LineFramer(8)
    assert framer.feed(b"abcdef") == []
    assert framer.feed(b"ghijkl") == [FrameError.of("oversize")]
    assert framer.pending == 0
    assert framer.feed(b"mnopqrstuvwxyz" * 100) == []  # still dropping, nothing held
    assert framer.pending == 0
    assert framer.feed(b"xyz\nok\n") == [b"ok"]


def test_cobs_oversize_across_reads_is_one_error_and_drops_to_delimiter() -> None:
    framer = CobsFramer(16)
    good = encode_message("cobs", {"t": "ack", "id": 1})
    assert framer.feed(b"\x55" * 10) == []
    assert framer.feed(b"\x55" * 10) == [FrameError.of("oversize")]
    assert framer.feed(b"\x55" * 5000) == []
    assert framer.pending == 0
    assert framer.feed(b"\x00" + good) == [msgpack.packb({"t": "ack", "id": 1})]


def test_reset_forgets_a_partial_frame() -> None:
    for framer in (LineFramer(), CobsFramer()):
        framer.feed(b"\x41\x42\x43")
        framer.reset()
        assert framer.pending == 0
    line = LineFramer()
    line.feed(b'{"t":')
    line.reset()
    assert line.feed(b'{"t":"ack","id":1}\n') == [b'{"t":"ack","id":1}']


def test_bad_framing_and_limit_are_refused() -> None:
    with pytest.raises(ValueError, match="framing"):
        make_framer("slip")
    with pytest.raises(ValueError, match="max_frame"):
        LineFramer(0)
    with pytest.raises(ValueError, match="newline"):
        encode_frame("line", b"a\nb")
    with pytest.raises(ValueError, match="framing"):
        encode_frame("slip", b"a")


def test_cobs_decode_rejects_malformed() -> None:
    with pytest.raises(ValueError, match="past the frame end"):
        cobs_decode(b"\x05\x41")
    with pytest.raises(ValueError, match="past the frame end"):
        cobs_decode(b"\x00")


def test_protocol_error_names_the_field() -> None:
    with pytest.raises(ProtocolError, match=r"value: expected an integer 0\.\.1, got 7") as info:
        validate_message({"t": "cmd", "id": 1, "op": "pin", "pin": 3, "value": 7})
    assert info.value.code == "schema"
    with pytest.raises(ProtocolError, match="speaks 1, not 2") as info:
        validate_message({"v": 2, "t": "whatever"})
    assert info.value.code == "version"


# --- hypothesis ---

keys = st.text(min_size=1, max_size=12)
scalars = st.one_of(
    st.integers(min_value=-(2**31), max_value=2**32 - 1),
    st.floats(allow_nan=False, allow_infinity=False),
    st.booleans(), st.none(), st.text(max_size=40),
)
readings = st.fixed_dictionaries(
    {"t": st.just("reading"), "values": st.dictionaries(keys, scalars, min_size=1,
                                                        max_size=8)},
    optional={"seq": st.integers(0, 2**32 - 1), "v": st.just(1),
              "ts_ms": st.integers(0, 2**32 - 1)},
)
commands = st.one_of(
    st.fixed_dictionaries({"t": st.just("cmd"), "id": st.integers(0, 2**32 - 1),
                           "op": st.just("pin"), "pin": st.integers(0, 255),
                           "value": st.integers(0, 1)}),
    st.fixed_dictionaries({"t": st.just("cmd"), "id": st.integers(0, 2**32 - 1),
                           "op": st.just("custom"), "name": st.text(min_size=1, max_size=32),
                           "arg": scalars}),
)
messages = st.one_of(
    readings, commands,
    st.fixed_dictionaries({"t": st.just("ack"), "id": st.integers(0, 2**32 - 1)}),
    st.fixed_dictionaries({"t": st.just("heartbeat"), "uptime_ms": st.integers(0, 2**40)}),
)


def split_at(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({c % (len(data) + 1) for c in cuts})
    chunks, last = [], 0
    for p in [*points, len(data)]:
        chunks.append(data[last:p])
        last = p
    return chunks


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(messages, min_size=1, max_size=12),
       st.lists(st.binary(max_size=30), max_size=4),
       st.lists(st.integers(min_value=0), max_size=20),
       st.sampled_from(["line", "cobs"]))
def test_random_splits_give_the_same_frames(
    msgs: list[dict[str, Any]], garbage: list[bytes], cuts: list[int], framing: str
) -> None:
    stream = b"".join(encode_message(framing, m) for m in msgs)
    sep = b"\n" if framing == "line" else b"\x00"
    stream += b"".join(g + sep for g in garbage)
    whole = make_framer(framing).feed(stream)
    framer = make_framer(framing)
    pieces: list[bytes | FrameError] = []
    for chunk in split_at(stream, cuts):
        pieces += framer.feed(chunk)
    assert pieces == whole
    decoded = [decode_message(framing, f) for f in whole[: len(msgs)]]
    assert decoded == [orjson.loads(orjson.dumps(m)) if framing == "line" else m for m in msgs]


@settings(max_examples=500)
@given(st.binary(max_size=600), st.lists(st.integers(min_value=0), max_size=10),
       st.sampled_from(["line", "cobs"]), st.integers(min_value=32, max_value=300))
def test_garbage_never_raises_and_memory_stays_bounded(
    data: bytes, cuts: list[int], framing: str, limit: int
) -> None:
    framer = make_framer(framing, limit)
    for chunk in split_at(data, cuts):
        for item in framer.feed(chunk):
            if isinstance(item, bytes):
                assert len(item) <= limit
                try:
                    decode_message(framing, item)
                except ProtocolError as err:
                    assert err.code in {"msgpack", "utf8", "json", "schema", "version"}
        assert framer.pending <= limit + 2 + (limit + 2) // 254 + 1
    # after any garbage, one delimiter resynchronises: the next frame comes through whole
    good = {"t": "ack", "id": 5}
    sep = b"\n" if framing == "line" else b"\x00"
    tail = framer.feed(sep + encode_message(framing, {"t": "ack", "id": 5}))
    assert isinstance(tail[-1], bytes) and decode_message(framing, tail[-1]) == good


@given(st.binary(max_size=2000))
def test_cobs_round_trip(data: bytes) -> None:
    encoded = cobs_encode(data)
    assert b"\x00" not in encoded
    assert len(encoded) <= len(data) + len(data) // 254 + 1
    assert cobs_decode(encoded) == data


@given(st.binary(max_size=4000))
def test_cobs_frame_round_trip(data: bytes) -> None:
    if not data:
        return
    assert CobsFramer().feed(encode_frame("cobs", data)) == [data]


@given(st.binary(min_size=1, max_size=300).filter(lambda b: b"\n" not in b and b[-1:] != b"\r"))
def test_line_frame_round_trip(data: bytes) -> None:
    assert LineFramer().feed(encode_frame("line", data)) == [data]


@given(messages)
def test_message_round_trip(msg: dict[str, Any]) -> None:
    for framing in ("line", "cobs"):
        (frame,) = make_framer(framing).feed(encode_message(framing, msg))
        assert isinstance(frame, bytes)
        expect = orjson.loads(orjson.dumps(msg)) if framing == "line" else msg
        assert decode_message(framing, frame) == expect
