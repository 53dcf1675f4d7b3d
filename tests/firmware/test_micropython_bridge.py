"""The MicroPython bridge module under CPython, with a fake ``machine`` module."""

from __future__ import annotations

import importlib.util
import sys
import types
from collections.abc import Iterator
from typing import Any

import pytest
from firmware_support import BRIDGES, VECTORS
from hypothesis import given, settings
from hypothesis import strategies as st

from mechaway.drivers.serial.protocol import (
    FrameError,
    ProtocolError,
    decode_message,
    encode_message,
    make_framer,
    validate_message,
)


class FakePin:
    OUT = 1
    IN = 0
    states: dict[int, int] = {}  # noqa: RUF012 (shared on purpose: the fake board)

    def __init__(self, pin: int, mode: int = 0) -> None:
        if not 0 <= pin <= 29:
            raise ValueError("invalid pin")
        self.pin = pin

    def value(self, v: int) -> None:
        FakePin.states[self.pin] = v


class FakePWM:
    duties: dict[int, int] = {}  # noqa: RUF012

    def __init__(self, pin: FakePin) -> None:
        if pin.pin not in (0, 1, 2, 3, 15, 16):
            raise ValueError("no PWM")
        self.pin = pin.pin

    def freq(self, hz: int) -> None:
        assert hz > 0

    def duty_u16(self, duty: int) -> None:
        assert 0 <= duty <= 65535
        FakePWM.duties[self.pin] = duty


class FakeADC:
    def __init__(self, pin: int) -> None:
        self.pin = pin

    def read_u16(self) -> int:
        return 40000 if FakePin.states.get(15) else 1000


class FakeUART:
    """A UART whose other end is the test: ``inbox`` is what the host sent."""

    def __init__(self, *args: Any) -> None:
        self.inbox = bytearray()
        self.sent = bytearray()

    def any(self) -> int:
        return len(self.inbox)

    def read(self, n: int) -> bytes:
        data = bytes(self.inbox[:n])
        del self.inbox[:n]
        return data

    def write(self, data: bytes) -> int:
        self.sent += data
        return len(data)


@pytest.fixture
def mb() -> Iterator[types.ModuleType]:
    """mechaway_bridge.py loaded fresh, with the fake machine module installed."""
    machine = types.ModuleType("machine")
    machine.Pin = FakePin  # type: ignore[attr-defined]
    machine.PWM = FakePWM  # type: ignore[attr-defined]
    machine.ADC = FakeADC  # type: ignore[attr-defined]
    machine.UART = FakeUART  # type: ignore[attr-defined]
    FakePin.states.clear()
    FakePWM.duties.clear()
    sys.modules["machine"] = machine
    spec = importlib.util.spec_from_file_location(
        "mechaway_bridge", BRIDGES / "micropython" / "mechaway_bridge.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    yield module
    del sys.modules["machine"]


def as_vector(items: list[Any]) -> list[dict[str, str]]:
    return [{"error": i} if isinstance(i, str) else {"frame": bytes(i).hex()} for i in items]


def test_crc(mb: types.ModuleType) -> None:
    for vec in VECTORS["crc"]:
        assert mb.crc16(bytes.fromhex(vec["in"])) == vec["crc"]


@pytest.mark.parametrize("vec", VECTORS["decode"], ids=lambda v: v["name"])
def test_decode_vectors(mb: types.ModuleType, vec: dict[str, Any]) -> None:
    framer = (mb.LineFramer if vec["framing"] == "line" else mb.CobsFramer)(vec["max_frame"])
    items = framer.feed(bytes.fromhex(vec["in"]))
    assert as_vector(items) == vec["frames"]
    # every valid message of the vectors reads the same as in mechaway
    for item, expect in zip(items, vec["messages"], strict=True):
        if "msg" in expect:
            assert mb.decode(vec["framing"], item) == expect["msg"]


@pytest.mark.parametrize("vec", VECTORS["encode"], ids=lambda v: v["name"])
def test_encode_vectors(mb: types.ModuleType, vec: dict[str, Any]) -> None:
    assert mb.encode("cobs", vec["msg"]).hex() == vec["cobs"]  # byte-exact (float32 too)
    (frame,) = make_framer("line").feed(mb.encode("line", vec["msg"]))
    assert isinstance(frame, bytes) and decode_message("line", frame) == vec["msg"]


def command_frames() -> list[tuple[str, bytes, Any]]:
    out = []
    for vec in VECTORS["decode"]:
        for item in make_framer(vec["framing"], vec["max_frame"]).feed(bytes.fromhex(vec["in"])):
            if isinstance(item, FrameError):
                continue
            try:
                obj = decode_message(vec["framing"], item)
            except ProtocolError:
                obj = None
            out.append((vec["framing"], item, obj))
    return out


@pytest.mark.parametrize("framing", ["line", "cobs"])
def test_commands_checked_as_mechaway_validates_them(mb: types.ModuleType,
                                                     framing: str) -> None:
    checked = 0
    for fr, frame, _ in command_frames():
        if fr != framing:
            continue
        obj = mb.decode(framing, frame)
        if not (isinstance(obj, dict) and obj.get("t") == "cmd"):
            continue
        checked += 1
        code = mb.check_command(obj)
        try:
            msg = validate_message(obj)
        except ProtocolError:
            assert code is not None, obj
            continue
        if msg["op"] in ("pin", "pwm", "custom", "hello"):
            assert code is None, obj
        else:
            assert code == "bad_op"
    assert checked >= 10


@pytest.mark.parametrize("framing", ["line", "cobs"])
def test_bridge_reads_sensors_and_obeys_commands(mb: types.ModuleType, framing: str) -> None:
    uart = FakeUART()
    clock = [0]
    adc = FakeADC(26)
    count = {"n": 0}

    def values() -> dict[str, int]:
        count["n"] += 1
        return {"a0": adc.read_u16(), "count": count["n"]}

    def set_count(arg: Any) -> None:
        if not isinstance(arg, int):
            raise ValueError("int please")
        count["n"] = arg

    bridge = mb.Bridge(uart, "pico-1", framing=framing, fw="0.1.0",
                       custom={"count": set_count})

    def tick() -> int:
        clock[0] += 100
        return clock[0]

    def host_reads() -> list[dict[str, Any]]:
        items = framer.feed(bytes(uart.sent))
        uart.sent.clear()
        out = []
        for item in items:
            assert isinstance(item, bytes), item
            out.append(decode_message(framing, item))
        return out

    framer = make_framer(framing)
    mb.run(bridge, values, period_ms=200, heartbeat_ms=1000, clock=tick, rounds=12)
    first = host_reads()
    assert first[0] == {"v": 1, "t": "hello", "device": "pico-1", "fw": "0.1.0",
                        "caps": ["pin", "pwm", "custom"], "max_frame": 256}
    readings = [m for m in first if m["t"] == "reading"]
    assert [r["seq"] for r in readings] == list(range(len(readings))) and len(readings) >= 5
    assert all(r["values"]["a0"] == 1000 for r in readings)
    assert any(m["t"] == "heartbeat" for m in first)

    commands = [
        {"t": "cmd", "id": 1, "op": "pin", "pin": 15, "value": 1},
        {"t": "cmd", "id": 2, "op": "pwm", "pin": 16, "value": 255},
        {"t": "cmd", "id": 3, "op": "pwm", "pin": 7, "value": 1},
        {"t": "cmd", "id": 4, "op": "pin", "pin": 99, "value": 1},
        {"t": "cmd", "id": 5, "op": "custom", "name": "count", "arg": 500},
        {"t": "cmd", "id": 6, "op": "custom", "name": "count", "arg": "x"},
        {"t": "cmd", "id": 7, "op": "custom", "name": "nope"},
        {"t": "cmd", "id": 8, "op": "dance"},
    ]
    uart.inbox += b"".join(encode_message(framing, c) for c in commands)
    uart.inbox += b"garbage\n" if framing == "line" else b"\x05\x01\x02\x03\x04\x00"
    bridge.poll()
    assert host_reads() == [
        {"t": "ack", "id": 1},
        {"t": "ack", "id": 2},
        {"t": "error", "id": 3, "code": "bad_pin"},
        {"t": "error", "id": 4, "code": "bad_pin"},
        {"t": "ack", "id": 5},
        {"t": "error", "id": 6, "code": "bad_value"},
        {"t": "error", "id": 7, "code": "bad_value"},
        {"t": "error", "id": 8, "code": "bad_op"},
        {"t": "error", "code": "json" if framing == "line" else "crc"},
    ]
    assert FakePin.states == {15: 1} and FakePWM.duties == {16: 65535}
    mb.run(bridge, values, period_ms=200, clock=tick, rounds=4)
    after = [m for m in host_reads() if m["t"] == "reading"]
    assert after and after[-1]["values"]["a0"] == 40000  # pin 15 drives the fake ADC
    assert after[-1]["values"]["count"] > 500


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=300), st.sampled_from(["line", "cobs"]),
       st.integers(min_value=1, max_value=200))
def test_framers_agree_with_mechaway_on_any_bytes(data: bytes, framing: str,
                                                  limit: int) -> None:
    spec = importlib.util.spec_from_file_location(
        "mechaway_bridge_h", BRIDGES / "micropython" / "mechaway_bridge.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    ours = (module.LineFramer if framing == "line" else module.CobsFramer)(limit).feed(data)
    theirs = make_framer(framing, limit).feed(data)
    assert as_vector(ours) == [
        {"error": t.code} if isinstance(t, FrameError) else {"frame": t.hex()} for t in theirs]
