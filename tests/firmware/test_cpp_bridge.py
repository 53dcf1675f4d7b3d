"""The Arduino library (MechawayBridge.h), built with the host g++, against the shared
test vectors, and differentially against the Python framers on random bytes."""

from __future__ import annotations

import json
from typing import Any

import msgpack
import pytest
from firmware_support import VECTORS, LineProcess
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mechaway.drivers.serial.protocol import (
    FrameError,
    ProtocolError,
    decode_message,
    encode_message,
    make_framer,
    validate_message,
)


def cpp_frames(helper: LineProcess, framing: str, limit: int, data: bytes) -> list[dict[str, str]]:
    answer = helper.ask(f"D {framing} {limit} {data.hex() or '-'}")
    if answer == ".":
        return []
    out = []
    for item in answer.split(" "):
        kind, value = item.split(":", 1)
        out.append({"frame": value} if kind == "F" else {"error": value})
    return out


def py_frames(framing: str, limit: int, data: bytes) -> list[dict[str, str]]:
    items = make_framer(framing, limit).feed(data)
    return [{"error": i.code} if isinstance(i, FrameError) else {"frame": i.hex()}
            for i in items]


@pytest.mark.parametrize("vec", VECTORS["crc"], ids=lambda v: v["in"][:16] or "empty")
def test_crc(host_bridge: LineProcess, vec: dict[str, Any]) -> None:
    assert int(host_bridge.ask(f"K {vec['in'] or '-'}")) == vec["crc"]


@pytest.mark.parametrize("vec", VECTORS["decode"], ids=lambda v: v["name"])
def test_decode_vectors(host_bridge: LineProcess, vec: dict[str, Any]) -> None:
    got = cpp_frames(host_bridge, vec["framing"], vec["max_frame"], bytes.fromhex(vec["in"]))
    assert got == vec["frames"]


@pytest.mark.parametrize("vec", VECTORS["encode"], ids=lambda v: v["name"])
@pytest.mark.parametrize("framing", ["line", "cobs"])
def test_encode_vectors_byte_exact(host_bridge: LineProcess, vec: dict[str, Any],
                                   framing: str) -> None:
    assert host_bridge.ask(f"E {vec['name']} {framing}") == vec[framing]


def loose_decode(framing: str, frame: bytes) -> Any:
    try:
        if framing == "line":
            return json.loads(frame)
        return msgpack.unpackb(frame, raw=False, strict_map_key=False)
    except Exception:
        return None


KNOWN_OPS = {"pin", "pwm", "custom", "hello"}


def command_frames() -> list[tuple[str, bytes]]:
    """Every frame of the vectors that claims to be a command (valid or not)."""
    out = []
    for vec in VECTORS["decode"]:
        for item in py_frames(vec["framing"], vec["max_frame"], bytes.fromhex(vec["in"])):
            if "frame" in item:
                frame = bytes.fromhex(item["frame"])
                obj = loose_decode(vec["framing"], frame)
                if isinstance(obj, dict) and obj.get("t") == "cmd":
                    out.append((vec["framing"], frame))
    return out


COMMANDS = command_frames()


def test_the_vectors_hold_valid_and_invalid_commands() -> None:
    assert len(COMMANDS) >= 35


@pytest.mark.parametrize(("framing", "frame"), COMMANDS, ids=lambda x: str(x)[:60])
def test_commands_read_as_python_validates_them(host_bridge: LineProcess, framing: str,
                                                frame: bytes) -> None:
    answer = host_bridge.ask(f"C {framing} {frame.hex()}")
    try:
        msg = validate_message(loose_decode(framing, frame))
    except ProtocolError:
        assert answer.startswith("ERR "), answer
        return
    if msg["op"] not in KNOWN_OPS:
        assert answer == f"ERR bad_op {msg['id']}"
        return
    ok, cid, op, pin, value, name, arg = answer.split(" ", 6)
    assert (ok, int(cid), op) == ("OK", msg["id"], msg["op"])
    if op in ("pin", "pwm"):
        assert (int(pin), int(value)) == (msg["pin"], msg["value"])
    if op == "custom":
        assert bytes.fromhex(name).decode() == msg["name"]
        assert arg == expected_arg(msg)


def expected_arg(msg: dict[str, Any]) -> str:
    """How the helper prints what the device read of a custom command's ``arg``."""
    if "arg" not in msg:
        return "none"
    given = msg["arg"]
    if given is None:
        return "nil"
    if isinstance(given, bool):
        return "true" if given else "false"
    if isinstance(given, int):
        return f"int:{given}"
    if isinstance(given, str):
        return "str:" + given.encode().hex()
    if isinstance(given, dict | list):
        return "other"
    raise AssertionError(f"no vector expected with arg {given!r}")


def bridge(helper: LineProcess, framing: str, data: bytes) -> tuple[list[Any], list[str]]:
    """Bytes into a Bridge on the host: the messages it wrote back, and its pin events."""
    answer = helper.ask(f"B {framing} {data.hex()}")
    written, *events = answer.split(" ")
    raw = written.removeprefix("W:")
    out = []
    for item in make_framer(framing).feed(bytes.fromhex(raw) if raw != "-" else b""):
        assert isinstance(item, bytes)
        out.append(decode_message(framing, item))
    return out, events


@pytest.mark.parametrize("framing", ["line", "cobs"])
def test_bridge_obeys_commands_with_acks_and_errors(host_bridge: LineProcess,
                                                    framing: str) -> None:
    cmds = [
        {"t": "cmd", "id": 1, "op": "pin", "pin": 13, "value": 1},
        {"t": "cmd", "id": 2, "op": "pwm", "pin": 9, "value": 200},
        {"t": "cmd", "id": 3, "op": "pwm", "pin": 4, "value": 10},  # no PWM on 4
        {"t": "cmd", "id": 4, "op": "custom", "name": "blink", "arg": 2},
        {"t": "cmd", "id": 5, "op": "custom", "name": "nope"},
        {"t": "cmd", "id": 6, "op": "reboot"},
        {"t": "cmd", "id": 7, "op": "pin", "pin": 13, "value": 5},
        {"v": 2, "t": "cmd", "id": 8, "op": "hello"},
        {"t": "cmd", "id": 9, "op": "hello"},
    ]
    data = b"".join(encode_message(framing, c) for c in cmds)
    garbage = b"\xde\xad\xbe\xef\x00" if framing == "cobs" else b"not json\n"
    replies, events = bridge(host_bridge, framing, data + garbage)
    assert events == ["P:13=1", "PWM:9=200", "CUSTOM:blink", "CUSTOM:nope"]
    assert replies == [
        {"t": "ack", "id": 1},
        {"t": "ack", "id": 2},
        {"t": "error", "id": 3, "code": "bad_pin"},
        {"t": "ack", "id": 4},
        {"t": "error", "id": 5, "code": "bad_value"},
        {"t": "error", "id": 6, "code": "bad_op"},
        {"t": "error", "id": 7, "code": "bad_value"},
        {"t": "error", "id": 8, "code": "version"},
        {"v": 1, "t": "hello", "device": "host", "caps": ["pin", "pwm", "custom"],
         "max_frame": 96},
        {"t": "ack", "id": 9},
        {"t": "error", "code": "cobs" if framing == "cobs" else "json"},
    ]


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=400), st.sampled_from(["line", "cobs"]),
       st.integers(min_value=1, max_value=300))
def test_cpp_framer_agrees_with_python_on_any_bytes(host_bridge: LineProcess, data: bytes,
                                                     framing: str, limit: int) -> None:
    assert cpp_frames(host_bridge, framing, limit, data) == py_frames(framing, limit, data)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(min_size=1, max_size=200), st.sampled_from(["line", "cobs"]))
def test_command_reader_survives_any_bytes(host_bridge: LineProcess, data: bytes,
                                           framing: str) -> None:
    # built with ASan/UBSan: a bad read would abort the helper and fail ask()
    answer = host_bridge.ask(f"C {framing} {data.hex()}")
    assert answer.startswith(("OK ", "ERR "))
    replies, _ = bridge(host_bridge, framing, data)
    assert all(r["t"] in {"ack", "error", "hello"} for r in replies)
