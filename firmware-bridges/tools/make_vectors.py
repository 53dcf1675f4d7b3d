"""Writes ../test-vectors.json from PROTOCOL.md, with the standard library only.

The bytes are built here, independently of every implementation under test: CRC with
``binascii.crc_hqx`` (CRC-16/CCITT-FALSE when started at 0xFFFF), COBS and msgpack with
the small encoders below, written from their specifications. Every expected outcome is
written by hand next to its input; a literal reading of PROTOCOL.md's framing rules
(``reference_frames``) re-checks the frame-level ones before the file is written.

    python3 firmware-bridges/tools/make_vectors.py
"""

from __future__ import annotations

import binascii
import json
import pathlib
import struct
from typing import Any

OUT = pathlib.Path(__file__).resolve().parent.parent / "test-vectors.json"


# --- encoders written from the specifications ---


def crc16(data: bytes) -> int:
    return binascii.crc_hqx(data, 0xFFFF)


def cobs_encode(data: bytes) -> bytes:
    """Cheshire & Baker: each block is a code byte (distance to the next zero) + data."""
    out = bytearray()
    block = bytearray()
    for byte in data:
        if byte == 0:
            out.append(len(block) + 1)
            out += block
            block.clear()
        else:
            block.append(byte)
            if len(block) == 254:
                out.append(255)
                out += block
                block.clear()
    out.append(len(block) + 1)
    out += block
    return bytes(out)


def mp(obj: Any) -> bytes:
    """Shortest msgpack encoding; floats as float32 (what an AVR writes)."""
    if obj is None:
        return b"\xc0"
    if obj is True:
        return b"\xc3"
    if obj is False:
        return b"\xc2"
    if isinstance(obj, int):
        if 0 <= obj <= 0x7F:
            return bytes([obj])
        if -32 <= obj < 0:
            return struct.pack(">b", obj)
        for lo, hi, tag, fmt in (
            (0, 0xFF, 0xCC, ">B"), (0, 0xFFFF, 0xCD, ">H"), (0, 0xFFFFFFFF, 0xCE, ">I"),
            (-0x80, 0x7F, 0xD0, ">b"), (-0x8000, 0x7FFF, 0xD1, ">h"),
            (-0x80000000, 0x7FFFFFFF, 0xD2, ">i"),
        ):
            if lo <= obj <= hi:
                return bytes([tag]) + struct.pack(fmt, obj)
        raise ValueError(obj)
    if isinstance(obj, float):
        return b"\xca" + struct.pack(">f", obj)
    if isinstance(obj, str):
        raw = obj.encode()
        if len(raw) < 32:
            return bytes([0xA0 | len(raw)]) + raw
        if len(raw) < 256:
            return b"\xd9" + bytes([len(raw)]) + raw
        return b"\xda" + struct.pack(">H", len(raw)) + raw
    if isinstance(obj, list):
        assert len(obj) < 16
        return bytes([0x90 | len(obj)]) + b"".join(mp(x) for x in obj)
    if isinstance(obj, dict):
        assert len(obj) < 16
        return bytes([0x80 | len(obj)]) + b"".join(mp(k) + mp(v) for k, v in obj.items())
    raise TypeError(obj)


def line(msg: dict[str, Any]) -> bytes:
    return json.dumps(msg, separators=(",", ":"), ensure_ascii=False).encode() + b"\n"


def cobs_frame(payload: bytes) -> bytes:
    return cobs_encode(payload + crc16(payload).to_bytes(2, "big")) + b"\x00"


def cframe(msg: Any) -> bytes:
    return cobs_frame(mp(msg))


# --- PROTOCOL.md section 1, read literally (re-checks the hand-written frame outcomes) ---


def reference_frames(framing: str, data: bytes, limit: int) -> list[dict[str, str]]:
    out: list[dict[str, str]] = []
    if framing == "line":
        for part in data.split(b"\n")[:-1]:  # the last part has no terminator yet
            body = part[:-1] if part.endswith(b"\r") else part
            if len(body) > limit:
                out.append({"error": "oversize"})
            elif body:
                out.append({"frame": body.hex()})
        return out
    enc_max = (limit + 2) + (limit + 2) // 254 + 1
    for part in data.split(b"\x00")[:-1]:
        if not part:
            continue
        if len(part) > enc_max:
            out.append({"error": "oversize"})
            continue
        dec, i, ok = bytearray(), 0, True
        while i < len(part):
            code = part[i]
            if i + code > len(part):
                ok = False
                break
            dec += part[i + 1 : i + code]
            i += code
            if code < 255 and i < len(part):
                dec.append(0)
        if not ok:
            out.append({"error": "cobs"})
        elif len(dec) < 3:
            out.append({"error": "short"})
        elif crc16(bytes(dec[:-2])) != int.from_bytes(dec[-2:], "big"):
            out.append({"error": "crc"})
        elif len(dec) - 2 > limit:
            out.append({"error": "oversize"})
        else:
            out.append({"frame": bytes(dec[:-2]).hex()})
    return out


# --- the vectors ---

HELLO = {"v": 1, "t": "hello", "device": "uno-1", "fw": "0.1.0",
         "caps": ["pin", "pwm", "custom"], "max_frame": 96}
R1 = {"t": "reading", "seq": 1, "values": {"a0": 512, "count": 1}}
R2 = {"t": "reading", "seq": 2, "values": {"a0": 1023, "count": 2}}
R3 = {"t": "reading", "seq": 3, "values": {"a0": 0, "count": 3, "d13": 1}}
ACK = {"t": "ack", "id": 7}
ERR = {"t": "error", "id": 8, "code": "bad_pin", "msg": "pin 99"}
HB = {"t": "heartbeat", "uptime_ms": 120000}
CMD_PIN = {"v": 1, "t": "cmd", "id": 1, "op": "pin", "pin": 13, "value": 1}
CMD_PWM = {"v": 1, "t": "cmd", "id": 2, "op": "pwm", "pin": 9, "value": 128}
CMD_CUSTOM = {"v": 1, "t": "cmd", "id": 3, "op": "custom", "name": "blink", "arg": 3}
CMD_HELLO = {"v": 1, "t": "cmd", "id": 4, "op": "hello"}


def msg(m: Any) -> dict[str, Any]:
    return {"msg": m}


def err(code: str) -> dict[str, str]:
    return {"error": code}


def fr(raw: bytes) -> dict[str, str]:
    return {"frame": raw.hex()}


def jl(m: Any) -> bytes:
    return line(m)[:-1]


def decode_vectors() -> list[dict[str, Any]]:
    v: list[dict[str, Any]] = []

    def add(name: str, framing: str, data: bytes, frames: list[Any], messages: list[Any],  # noqa: PLR0917
            limit: int = 4096) -> None:
        v.append({"name": name, "framing": framing, "max_frame": limit, "in": data.hex(),
                  "frames": frames, "messages": messages})

    # line framing
    add("line: one reading", "line", line(R1), [fr(jl(R1))], [msg(R1)])
    add("line: CRLF terminator (Serial.println)", "line", jl(R1) + b"\r\n",
        [fr(jl(R1))], [msg(R1)])
    add("line: several messages, empty lines ignored", "line",
        line(HELLO) + b"\n\r\n" + line(R1) + line(ACK) + line(HB),
        [fr(jl(HELLO)), fr(jl(R1)), fr(jl(ACK)), fr(jl(HB))],
        [msg(HELLO), msg(R1), msg(ACK), msg(HB)])
    add("line: garbage line between readings", "line",
        line(R1) + b"hello world\n" + line(R2),
        [fr(jl(R1)), fr(b"hello world"), fr(jl(R2))], [msg(R1), err("json"), msg(R2)])
    add("line: boot noise glued to the first line", "line",
        b"\xfe\x00\x13" + line(R1) + line(R2),
        [fr(b"\xfe\x00\x13" + jl(R1)), fr(jl(R2))], [err("utf8"), msg(R2)])
    add("line: non-UTF-8 line", "line", b"\xff\xfe{}\n" + line(R1),
        [fr(b"\xff\xfe{}"), fr(jl(R1))], [err("utf8"), msg(R1)])
    add("line: UTF-8 text in a string", "line",
        line({"t": "reading", "values": {"temp": 21.5, "unit": "°C"}}),
        [fr(jl({"t": "reading", "values": {"temp": 21.5, "unit": "°C"}}))],
        [msg({"t": "reading", "values": {"temp": 21.5, "unit": "°C"}})])
    long_line = b"A" * 40
    add("line: oversize line dropped up to its newline", "line",
        long_line + b"\n" + line(ACK), [err("oversize"), fr(jl(ACK))],
        [err("oversize"), msg(ACK)], limit=32)
    add("line: oversize line arriving in one run, then two good lines", "line",
        b"B" * 100 + b"\n" + line(ACK) + line(ACK),
        [err("oversize"), fr(jl(ACK)), fr(jl(ACK))], [err("oversize"), msg(ACK), msg(ACK)],
        limit=20)
    exact = b'{"t":"ack","id":1,"p":"' + b"x" * 8 + b'"}'
    assert len(exact) == 33
    add("line: a line of exactly max_frame bytes (+CRLF) is accepted", "line",
        exact + b"\r\n", [fr(exact)], [msg({"t": "ack", "id": 1, "p": "x" * 8})], limit=33)
    add("line: max_frame + 1 bytes is oversize", "line", exact + b"\n",
        [err("oversize")], [err("oversize")], limit=32)
    add("line: truncated line (no newline yet) yields nothing", "line",
        line(R1) + jl(R2)[:10], [fr(jl(R1))], [msg(R1)])
    add("line: NaN is not JSON", "line", b'{"t":"reading","values":{"a":NaN}}\n',
        [fr(b'{"t":"reading","values":{"a":NaN}}')], [err("json")])
    add("line: JSON that is not an object", "line", b"[1,2]\n42\n",
        [fr(b"[1,2]"), fr(b"42")], [err("schema"), err("schema")])
    bad = [
        ({"v": 1, "values": {"a": 1}}, "schema"),  # no t
        ({"t": "launch"}, "schema"),  # unknown type
        ({"v": 2, "t": "reading", "values": {"a": 1}}, "version"),
        ({"v": True, "t": "ack", "id": 1}, "schema"),  # bool is not int
        ({"t": "reading", "values": [1, 2]}, "schema"),
        ({"t": "reading", "values": {}}, "schema"),
        ({"t": "reading", "values": {"a": {"b": 1}}}, "schema"),
        ({"t": "hello", "device": "x"}, "schema"),  # hello needs v
        ({"v": 1, "t": "hello", "device": ""}, "schema"),
        ({"t": "ack"}, "schema"),
        ({"t": "ack", "id": -1}, "schema"),
        ({"t": "ack", "id": 4294967296}, "schema"),
        ({"t": "error", "id": 3}, "schema"),  # no code
        ({"t": "heartbeat"}, "schema"),
        ({"t": "cmd", "id": 1, "op": "pin", "pin": 13, "value": 2}, "schema"),
        ({"t": "cmd", "id": 1, "op": "pwm", "pin": 9, "value": 256}, "schema"),
        ({"t": "cmd", "id": 1, "op": "pin", "pin": 300, "value": 1}, "schema"),
        ({"t": "cmd", "id": 1, "op": "custom"}, "schema"),
        ({"t": "cmd", "op": "hello"}, "schema"),
    ]
    add("line: messages that break the schema", "line", b"".join(line(m) for m, _ in bad),
        [fr(jl(m)) for m, _ in bad], [err(code) for _, code in bad])
    ok = [
        {"t": "reading", "values": {"a": 1.5, "b": True, "c": None, "d": "x", "e": -3}},
        {"v": 1, "t": "reading", "seq": 4294967295, "ts_ms": 5, "values": {"a": 1},
         "extra": {"ignored": True}},
        {"t": "error", "code": "crc"},
        {"t": "cmd", "id": 9, "op": "custom", "name": "set_mode", "arg": {"mode": "eco"}},
        {"t": "cmd", "id": 10, "op": "future_op", "x": 1},
        {"v": 1, "t": "hello", "device": "d"},
    ]
    add("line: valid edge cases (optional fields, extras, unknown op)", "line",
        b"".join(line(m) for m in ok), [fr(jl(m)) for m in ok], [msg(m) for m in ok])

    # what a device must read: JSON spacing and escapes, limits, argument types
    spaced = (b' { "t" : "cmd" , "id" : 11 , "op" : "pin" , "pin" : 7 , "value" : 0 } ',
              {"t": "cmd", "id": 11, "op": "pin", "pin": 7, "value": 0})
    escaped = (b'{"t":"cmd","id":12,"op":"custom","name":"a\\"b\\u0041","arg":"x\\ny"}',
               {"t": "cmd", "id": 12, "op": "custom", "name": 'a"bA', "arg": "x\ny"})
    add("line: commands with spaces and escapes", "line",
        spaced[0] + b"\n" + escaped[0] + b"\n", [fr(spaced[0]), fr(escaped[0])],
        [msg(spaced[1]), msg(escaped[1])])
    device_cmds = [
        ({"t": "cmd", "id": 4294967295, "op": "hello"}, None),
        ({"t": "cmd", "id": 13, "op": "custom", "name": "n" * 32, "arg": -7}, None),
        ({"t": "cmd", "id": 14, "op": "custom", "name": "n" * 33}, "schema"),
        ({"t": "cmd", "id": 15, "op": "custom", "name": "go", "arg": [1, [2, {"a": 3}]]}, None),
        ({"t": "cmd", "id": 16, "op": "custom", "name": "go", "arg": None}, None),
        ({"t": "cmd", "id": 17, "op": "custom", "name": "go", "arg": True}, None),
        ({"t": "cmd", "id": 18, "op": "a_very_long_operation_name"}, None),
        ({"t": "cmd", "id": 1.5, "op": "hello"}, "schema"),
        ({"t": "cmd", "id": 4294967296, "op": "hello"}, "schema"),
        ({"t": "cmd", "id": 19, "op": "pin", "pin": True, "value": 1}, "schema"),
        ({"t": "cmd", "id": 20, "op": "pwm", "pin": 9}, "schema"),
        ({"v": 1.0, "t": "cmd", "id": 21, "op": "hello"}, "schema"),
        ({"t": "cmd", "id": 22, "op": ""}, "schema"),
        ({"t": "cmd", "id": 23, "op": 5}, "schema"),
        ({"t": ["cmd"], "id": 24, "op": "hello"}, "schema"),
    ]
    add("line: commands at the edges of the schema", "line",
        b"".join(line(m) for m, _ in device_cmds), [fr(jl(m)) for m, _ in device_cmds],
        [msg(m) if code is None else err(code) for m, code in device_cmds])
    mp_cmds = [m for m, _ in device_cmds if not isinstance(m.get("id"), float)
               and m.get("id", 0) <= 0xFFFFFFFF and not isinstance(m.get("v"), float)]
    add("cobs: commands at the edges of the schema", "cobs",
        b"".join(cframe(m) for m in mp_cmds), [fr(mp(m)) for m in mp_cmds],
        [msg(m) if code is None else err(code) for m, code in device_cmds if m in mp_cmds])

    # cobs framing
    add("cobs: one reading", "cobs", cframe(R1), [fr(mp(R1))], [msg(R1)])
    add("cobs: leading delimiters and empty frames ignored", "cobs",
        b"\x00\x00" + cframe(HELLO) + b"\x00" + cframe(R1),
        [fr(mp(HELLO)), fr(mp(R1))], [msg(HELLO), msg(R1)])
    add("cobs: all message types", "cobs",
        b"".join(cframe(m) for m in (HELLO, R1, ACK, ERR, HB, CMD_PIN, CMD_PWM, CMD_CUSTOM,
                                      CMD_HELLO)),
        [fr(mp(m)) for m in (HELLO, R1, ACK, ERR, HB, CMD_PIN, CMD_PWM, CMD_CUSTOM,
                             CMD_HELLO)],
        [msg(m) for m in (HELLO, R1, ACK, ERR, HB, CMD_PIN, CMD_PWM, CMD_CUSTOM,
                          CMD_HELLO)])
    add("cobs: garbage ended by a delimiter costs only itself", "cobs",
        cframe(R1) + b"\xde\xad\xbe\xef\x00" + cframe(R2),
        [fr(mp(R1)), err("cobs"), fr(mp(R2))], [msg(R1), err("cobs"), msg(R2)])
    add("cobs: garbage glued to a frame costs that frame", "cobs",
        b"\x41\x42" + cframe(R1) + cframe(R2), [err("cobs"), fr(mp(R2))],
        [err("cobs"), msg(R2)])
    bad_crc = bytearray(cframe(R2))
    bad_crc[5] ^= 0x01
    add("cobs: corrupted byte fails the CRC", "cobs", cframe(R1) + bytes(bad_crc) + cframe(R3),
        [fr(mp(R1)), err("crc"), fr(mp(R3))], [msg(R1), err("crc"), msg(R3)])
    swapped = bytearray(cframe(R2))
    swapped[-3], swapped[-2] = swapped[-2], swapped[-3]  # CRC bytes swapped (little-endian)
    add("cobs: CRC sent little-endian is a CRC error", "cobs", bytes(swapped) + cframe(R1),
        [err("crc"), fr(mp(R1))], [err("crc"), msg(R1)])
    add("cobs: a code byte pointing past the end", "cobs", b"\x05\x41\x42\x00" + cframe(ACK),
        [err("cobs"), fr(mp(ACK))], [err("cobs"), msg(ACK)])
    add("cobs: too short to carry a CRC", "cobs", b"\x02\x41\x00\x01\x01\x00" + cframe(ACK),
        [err("short"), err("short"), fr(mp(ACK))], [err("short"), err("short"), msg(ACK)])
    half = cframe(R2)[:9]
    add("cobs: truncated frame, then a delimiter, then a good frame", "cobs",
        half + b"\x00" + cframe(R1), [err("cobs"), fr(mp(R1))], [err("cobs"), msg(R1)])
    add("cobs: truncated frame at the end yields nothing yet", "cobs",
        cframe(R1) + cframe(R2)[:-4], [fr(mp(R1))], [msg(R1)])
    big = {"t": "reading", "values": {"a": 1, "b": 2, "c": 3}}
    assert len(mp(big)) > 16
    add("cobs: oversize frame (limit 16)", "cobs", cframe(big) + cframe(ACK),
        [err("oversize"), fr(mp(ACK))], [err("oversize"), msg(ACK)], limit=16)
    add("cobs: oversize run without delimiters, then good frames", "cobs",
        b"\x55" * 300 + b"\x00" + cframe(ACK) + cframe(ACK),
        [err("oversize"), fr(mp(ACK)), fr(mp(ACK))], [err("oversize"), msg(ACK), msg(ACK)],
        limit=64)
    exact = mp({"t": "ack", "id": 7, "x": "abc"})
    add("cobs: a frame of exactly max_frame bytes is accepted", "cobs",
        cobs_frame(exact), [fr(exact)], [msg({"t": "ack", "id": 7, "x": "abc"})],
        limit=len(exact))
    add("cobs: max_frame - 1 makes it oversize", "cobs", cobs_frame(exact),
        [err("oversize")], [err("oversize")], limit=len(exact) - 1)
    longtext = {"t": "error", "code": "x", "msg": "z" * 280}
    zeros = {"t": "reading", "values": {"a": 0, "b": 0, "c": 0, "d": 256, "e": 0.0}}
    add("cobs: a frame longer than one COBS block (254) and one full of zeros", "cobs",
        cframe(longtext) + cframe(zeros), [fr(mp(longtext)), fr(mp(zeros))],
        [msg(longtext), msg(zeros)])
    float64 = b"\x82\xa1t\xa7reading\xa6values\x81\xa1x\xcb" + struct.pack(">d", 0.1)
    add("cobs: float64 values are accepted", "cobs", cobs_frame(float64), [fr(float64)],
        [msg({"t": "reading", "values": {"x": 0.1}})])
    add("cobs: bytes that are not msgpack (0xc1 is never used)", "cobs",
        cobs_frame(b"\xc1") + cframe(ACK), [fr(b"\xc1"), fr(mp(ACK))],
        [err("msgpack"), msg(ACK)])
    two = mp(ACK) + mp(ACK)
    add("cobs: two msgpack values in one frame", "cobs", cobs_frame(two), [fr(two)],
        [err("msgpack")])
    cut = mp(R1)[:-1]
    add("cobs: a msgpack value cut short (valid CRC)", "cobs", cobs_frame(cut), [fr(cut)],
        [err("msgpack")])
    not_map = mp([1, 2, 3])
    int_keys = b"\x82\x01\x02\xa1t\xa3ack"
    bin_value = b"\x82\xa1t\xa7reading\xa6values\x81\xa1b\xc4\x02\x01\x02"
    add("cobs: msgpack that is not a protocol message", "cobs",
        cobs_frame(not_map) + cobs_frame(int_keys) + cobs_frame(bin_value)
        + cframe({"v": 3, "t": "ack", "id": 1}),
        [fr(not_map), fr(int_keys), fr(bin_value), fr(mp({"v": 3, "t": "ack", "id": 1}))],
        [err("schema"), err("schema"), err("schema"), err("version")])

    for vec in v:  # the frame-level outcomes must match the literal reading of section 1
        got = reference_frames(vec["framing"], bytes.fromhex(vec["in"]), vec["max_frame"])
        assert got == vec["frames"], (vec["name"], got, vec["frames"])
    return v


def encode_vectors() -> list[dict[str, Any]]:
    named = {
        "hello": HELLO, "reading": R1,
        "reading_float": {"t": "reading", "seq": 5, "values": {"temp": 21.5, "a0": -12}},
        "ack": ACK, "error": ERR, "heartbeat": HB, "cmd_pin": CMD_PIN, "cmd_pwm": CMD_PWM,
        "cmd_custom": CMD_CUSTOM, "cmd_hello": CMD_HELLO,
    }
    return [
        {"name": name, "msg": m, "line": line(m).hex(), "cobs": cframe(m).hex(),
         "from": "host" if m["t"] == "cmd" else "device"}
        for name, m in named.items()
    ]


def crc_vectors() -> list[dict[str, Any]]:
    data = [b"123456789", b"", b"\x00", b"\xff" * 8, mp(ACK)]
    return [{"in": d.hex(), "crc": crc16(d)} for d in data]


def main() -> None:
    assert crc16(b"123456789") == 0x29B1  # CRC-16/CCITT-FALSE check value
    doc = {
        "protocol": 1,
        "comment": "Made by tools/make_vectors.py from PROTOCOL.md; do not edit by hand.",
        "crc16": "CRC-16/CCITT-FALSE: poly 0x1021, init 0xFFFF, no reflection, xorout 0, "
                 "check 0x29B1, appended big-endian",
        "crc": crc_vectors(),
        "decode": decode_vectors(),
        "encode": encode_vectors(),
    }
    OUT.write_text(json.dumps(doc, indent=1, ensure_ascii=False) + "\n")
    print(f"wrote {OUT} ({len(doc['decode'])} decode, {len(doc['encode'])} encode vectors)")


if __name__ == "__main__":
    main()
