# mechaway bridge for MicroPython (Raspberry Pi Pico, ESP32): the bridge protocol v1
# (../PROTOCOL.md) in both framings, over a UART or the USB serial console.
#
# Copy this file to the board, then in main.py:
#
#     import mechaway_bridge as mb
#     mb.main()                       # line framing on the USB console, A0 = ADC(26)
#
# or build your own Bridge (see main() at the end). Written for MicroPython (no typing,
# no f-strings, no CPython-only calls); tested under CPython with a fake `machine`.
# ruff: noqa: UP031 (%-formatting works on every MicroPython port)
import json
import struct
import time

VERSION = 1
MAX_FRAME = 4096


def crc16(data, crc=0xFFFF):
    """CRC-16/CCITT-FALSE (poly 0x1021, init 0xFFFF; check 0x29B1)."""
    for byte in data:
        crc ^= byte << 8
        for _ in range(8):
            crc = ((crc << 1) ^ 0x1021) & 0xFFFF if crc & 0x8000 else (crc << 1) & 0xFFFF
    return crc


def cobs_encode(data):
    out = bytearray()
    start, n = 0, len(data)
    while True:
        end = start
        while end < n and data[end] != 0 and end - start < 254:
            end += 1
        code = end - start + 1
        out.append(code)
        out.extend(data[start:end])
        if end == n:
            return bytes(out)
        start = end if code == 255 else end + 1


def cobs_decode(data):
    """The decoded bytes, or None if a code byte points past the end."""
    out = bytearray()
    i, n = 0, len(data)
    while i < n:
        code = data[i]
        if code == 0 or i + code > n:
            return None
        out.extend(data[i + 1:i + code])
        i += code
        if code != 255 and i < n:
            out.append(0)
    return bytes(out)


class LineFramer:
    """Frames end at \\n (one \\r before it removed); feed() returns frames (bytes) and
    errors (str codes, e.g. "oversize") in order."""

    def __init__(self, max_frame=MAX_FRAME):
        self.max_frame = max_frame
        self.buf = bytearray()
        self.dropping = False

    def feed(self, data):
        out = []
        limit = self.max_frame
        for byte in data:
            if self.dropping:
                if byte == 10:
                    self.dropping = False
                continue
            if byte == 10:
                frame = self.buf
                self.buf = bytearray()
                if frame and frame[-1] == 13:
                    frame = frame[:-1]
                if frame:
                    out.append(bytes(frame) if len(frame) <= limit else "oversize")
                continue
            if len(self.buf) > limit:  # room for the line and its \r is full
                self.buf = bytearray()
                self.dropping = True
                out.append("oversize")
                continue
            self.buf.append(byte)
        return out


class CobsFramer:
    """COBS(payload + CRC-16 big-endian) + 0x00; feed() as for LineFramer."""

    def __init__(self, max_frame=MAX_FRAME):
        self.max_frame = max_frame
        n = max_frame + 2
        self.enc_max = n + n // 254 + 1
        self.buf = bytearray()
        self.dropping = False

    def feed(self, data):
        out = []
        for byte in data:
            if self.dropping:
                if byte == 0:
                    self.dropping = False
                continue
            if byte == 0:
                part = self.buf
                self.buf = bytearray()
                if part:
                    out.append(self._decode(part))
                continue
            if len(self.buf) >= self.enc_max:
                self.buf = bytearray()
                self.dropping = True
                out.append("oversize")
                continue
            self.buf.append(byte)
        return out

    def _decode(self, part):
        dec = cobs_decode(part)
        if dec is None:
            return "cobs"
        if len(dec) < 3:
            return "short"
        if crc16(dec) != 0:
            return "crc"
        if len(dec) - 2 > self.max_frame:
            return "oversize"
        return dec[:-2]


# --- msgpack, the subset the protocol needs ---

def mp_pack(obj, out=None):
    """Shortest encodings; floats as float32."""
    if out is None:
        out = bytearray()
    if obj is None:
        out.append(0xC0)
    elif obj is True:
        out.append(0xC3)
    elif obj is False:
        out.append(0xC2)
    elif isinstance(obj, int):
        if 0 <= obj <= 0x7F or -32 <= obj < 0:
            out.append(obj & 0xFF)
        elif 0 <= obj <= 0xFF:
            out.extend(b"\xcc" + struct.pack(">B", obj))
        elif 0 <= obj <= 0xFFFF:
            out.extend(b"\xcd" + struct.pack(">H", obj))
        elif 0 <= obj <= 0xFFFFFFFF:
            out.extend(b"\xce" + struct.pack(">I", obj))
        elif obj >= 0:
            out.extend(b"\xcf" + struct.pack(">Q", obj))
        elif obj >= -0x80:
            out.extend(b"\xd0" + struct.pack(">b", obj))
        elif obj >= -0x8000:
            out.extend(b"\xd1" + struct.pack(">h", obj))
        elif obj >= -0x80000000:
            out.extend(b"\xd2" + struct.pack(">i", obj))
        else:
            out.extend(b"\xd3" + struct.pack(">q", obj))
    elif isinstance(obj, float):
        out.extend(b"\xca" + struct.pack(">f", obj))
    elif isinstance(obj, str):
        raw = obj.encode()
        n = len(raw)
        if n < 32:
            out.append(0xA0 | n)
        elif n < 256:
            out.extend(bytes((0xD9, n)))
        else:
            out.extend(b"\xda" + struct.pack(">H", n))
        out.extend(raw)
    elif isinstance(obj, (list, tuple)):
        n = len(obj)
        out.extend(bytes((0x90 | n,)) if n < 16 else b"\xdc" + struct.pack(">H", n))
        for item in obj:
            mp_pack(item, out)
    elif isinstance(obj, dict):
        n = len(obj)
        out.extend(bytes((0x80 | n,)) if n < 16 else b"\xde" + struct.pack(">H", n))
        for key in obj:
            mp_pack(key, out)
            mp_pack(obj[key], out)
    else:
        raise TypeError("cannot pack %r" % (obj,))
    return out


_FIXED = {0xCC: ">B", 0xCD: ">H", 0xCE: ">I", 0xCF: ">Q", 0xD0: ">b", 0xD1: ">h",
          0xD2: ">i", 0xD3: ">q", 0xCA: ">f", 0xCB: ">d"}


class _Unpacker:

    def __init__(self, data):
        self.data = data
        self.i = 0

    def take(self, n):
        if self.i + n > len(self.data):
            raise ValueError("truncated")
        chunk = self.data[self.i:self.i + n]
        self.i += n
        return chunk

    def value(self, depth=0):
        if depth > 16:
            raise ValueError("nested too deep")
        t = self.take(1)[0]
        if t <= 0x7F:
            return t
        if t >= 0xE0:
            return t - 256
        if 0xA0 <= t <= 0xBF:
            return self.text(t & 0x1F)
        if 0x90 <= t <= 0x9F:
            return [self.value(depth + 1) for _ in range(t & 0x0F)]
        if 0x80 <= t <= 0x8F:
            return self.map(t & 0x0F, depth)
        if t == 0xC0:
            return None
        if t in (0xC2, 0xC3):
            return t == 0xC3
        fmt = _FIXED.get(t)
        if fmt is not None:
            return struct.unpack(fmt, self.take(struct.calcsize(fmt)))[0]
        if t in (0xD9, 0xDA, 0xDB):
            return self.text(self.length(t - 0xD9))
        if t in (0xDC, 0xDD):
            return [self.value(depth + 1) for _ in range(self.length(t - 0xDB))]
        if t in (0xDE, 0xDF):
            return self.map(self.length(t - 0xDD), depth)
        if t in (0xC4, 0xC5, 0xC6):
            return bytes(self.take(self.length(t - 0xC4)))
        raise ValueError("unsupported msgpack type 0x%02x" % t)

    def length(self, which):
        size = (1, 2, 4)[which]
        return struct.unpack((">B", ">H", ">I")[which], self.take(size))[0]

    def text(self, n):
        return bytes(self.take(n)).decode()

    def map(self, n, depth):
        out = {}
        for _ in range(n):
            key = self.value(depth + 1)
            if isinstance(key, (list, dict)):
                raise ValueError("unhashable key")
            out[key] = self.value(depth + 1)
        return out


def mp_unpack(data):
    """Exactly one msgpack value; ValueError otherwise."""
    unpacker = _Unpacker(data)
    value = unpacker.value()
    if unpacker.i != len(data):
        raise ValueError("extra bytes after the value")
    return value


# --- messages ---

def _json_dumps(msg):
    try:
        return json.dumps(msg, separators=(",", ":"))
    except TypeError:  # older MicroPython: no separators argument
        return json.dumps(msg)


def encode(framing, msg):
    """One message as one frame on the wire."""
    if framing == "line":
        return _json_dumps(msg).encode() + b"\n"
    payload = bytes(mp_pack(msg))
    return cobs_encode(payload + struct.pack(">H", crc16(payload))) + b"\x00"


def decode(framing, frame):
    """A frame's content as an object, or an error code (str) if it is not one."""
    if framing == "line":
        try:
            text = bytes(frame).decode()
        except UnicodeError:
            return "utf8"
        try:
            return json.loads(text)
        except ValueError:
            return "json"
    try:
        return mp_unpack(frame)
    except Exception:  # ValueError, UnicodeError, struct's errors (differ by port)
        return "msgpack"


def _int_in(msg, key, lo, hi):
    value = msg.get(key)
    return isinstance(value, int) and not isinstance(value, bool) and lo <= value <= hi


def check_command(obj):
    """None if obj is a command this bridge can run, else the error code to answer."""
    if not isinstance(obj, dict):
        return "schema"
    if "v" in obj:
        v = obj["v"]
        if not isinstance(v, int) or isinstance(v, bool):
            return "schema"
        if v != VERSION:
            return "version"
    if obj.get("t") != "cmd" or not _int_in(obj, "id", 0, 0xFFFFFFFF):
        return "schema"
    op = obj.get("op")
    if not isinstance(op, str) or not op:
        return "schema"
    if op in ("pin", "pwm"):
        if not _int_in(obj, "pin", 0, 255):
            return "bad_pin"
        if not _int_in(obj, "value", 0, 1 if op == "pin" else 255):
            return "bad_value"
        return None
    if op == "custom":
        name = obj.get("name")
        if not isinstance(name, str) or not 1 <= len(name) <= 32:
            return "bad_value"
        return None
    if op == "hello":
        return None
    return "bad_op"


class Bridge:
    """The device side: poll() reads the port and obeys commands; hello(), reading(),
    heartbeat() send. ``port`` has any(), read(n) and write(b) (machine.UART, or
    StdioPort for the USB console). Pins are driven by ``machine`` unless ``on_pin`` /
    ``on_pwm`` are given (functions (pin, value) -> bool, False: no such pin)."""

    def __init__(self, port, device, *, framing="line", fw=None, max_frame=256,
                 on_pin=None, on_pwm=None, custom=None):
        if framing not in ("line", "cobs"):
            raise ValueError("framing must be line or cobs")
        self.port = port
        self.device = device
        self.fw = fw
        self.framing = framing
        self.max_frame = max_frame
        self.framer = LineFramer(max_frame) if framing == "line" else CobsFramer(max_frame)
        self.on_pin = on_pin or _machine_pin
        self.on_pwm = on_pwm or _machine_pwm
        self.custom = custom or {}  # name -> function(arg): None, or raise ValueError
        self.seq = 0
        self.heard = False
        self.bad_frames = 0

    def send(self, msg):
        self.port.write(encode(self.framing, msg))

    def begin(self):
        """After a reset: end whatever garbage the line carried, then say hello."""
        self.port.write(b"\n" if self.framing == "line" else b"\x00")
        self.hello()

    def hello(self):
        caps = ["pin", "pwm"]
        if self.custom:
            caps.append("custom")
        msg = {"v": VERSION, "t": "hello", "device": self.device}
        if self.fw:
            msg["fw"] = self.fw
        msg["caps"] = caps
        msg["max_frame"] = self.max_frame
        self.send(msg)

    def reading(self, values, ts_ms=None):
        msg = {"t": "reading", "seq": self.seq, "values": values}
        if ts_ms is not None:
            msg["ts_ms"] = ts_ms
        self.seq = (self.seq + 1) & 0xFFFFFFFF
        self.send(msg)

    def heartbeat(self, uptime_ms):
        self.send({"t": "heartbeat", "uptime_ms": uptime_ms})

    def error(self, code, cmd_id=None, text=None):
        msg = {"t": "error"}
        if cmd_id is not None:
            msg["id"] = cmd_id
        msg["code"] = code
        if text:
            msg["msg"] = text
        self.send(msg)

    def poll(self):
        """Reads what the port has (in bulk) and handles every complete frame."""
        n = self.port.any()
        if not n:
            return 0
        data = self.port.read(n)
        handled = 0
        for item in self.framer.feed(data or b""):
            handled += 1
            if isinstance(item, str):
                self.bad_frames += 1
                self.error(item)
            else:
                self._handle(item)
        return handled

    def _handle(self, frame):
        obj = decode(self.framing, frame)
        code = obj if isinstance(obj, str) else check_command(obj)
        cmd_id = obj.get("id") if isinstance(obj, dict) and _int_in(obj, "id", 0,
                                                                     0xFFFFFFFF) else None
        if code is None:
            self.heard = True
            op = obj["op"]
            try:
                if op in ("pin", "pwm"):
                    drive = self.on_pin if op == "pin" else self.on_pwm
                    if not drive(obj["pin"], obj["value"]):
                        code = "bad_pin"
                elif op == "custom":
                    handler = self.custom.get(obj["name"])
                    if handler is None:
                        code = "bad_value"
                    else:
                        handler(obj.get("arg"))
                elif op == "hello":
                    self.hello()
            except ValueError:
                code = "bad_value"
        if code is None:
            self.send({"t": "ack", "id": cmd_id})
        else:
            self.bad_frames += 1
            self.error(code, cmd_id)


def _machine_pin(pin, value):
    import machine

    try:
        machine.Pin(pin, machine.Pin.OUT).value(value)
    except (ValueError, OSError):
        return False
    return True


_pwms = {}


def _machine_pwm(pin, value):
    import machine

    try:
        pwm = _pwms.get(pin)
        if pwm is None:
            pwm = _pwms[pin] = machine.PWM(machine.Pin(pin))
            pwm.freq(1000)
        pwm.duty_u16(value * 257)  # 0..255 -> 0..65535
    except (ValueError, OSError):
        return False
    return True


class StdioPort:
    """The USB serial console (sys.stdin/stdout) as a port with any/read/write."""

    def __init__(self):
        import select
        import sys

        self._in = sys.stdin.buffer
        self._out = sys.stdout.buffer
        self._poll = select.poll()
        self._poll.register(sys.stdin, select.POLLIN)

    def any(self):
        return 1 if self._poll.poll(0) else 0

    def read(self, n):
        return self._in.read(n)

    def write(self, data):
        self._out.write(data)


def run(bridge, read_values, *, period_ms=1000, heartbeat_ms=5000, hello_ms=10000,
        clock=None, rounds=None):
    """The main loop: poll commands, a reading every period_ms, heartbeats, hello until
    heard. ``clock`` and ``rounds`` exist for tests (default: time.ticks_ms, forever)."""
    ticks = clock or getattr(time, "ticks_ms", None) or (lambda: int(time.monotonic() * 1000))
    diff = getattr(time, "ticks_diff", None) or (lambda a, b: a - b)
    bridge.begin()
    last_reading = last_beat = last_hello = ticks()
    while rounds is None or rounds > 0:
        if rounds is not None:
            rounds -= 1
        bridge.poll()
        now = ticks()
        if diff(now, last_reading) >= period_ms:
            last_reading = now
            bridge.reading(read_values())
        if diff(now, last_beat) >= heartbeat_ms:
            last_beat = now
            bridge.heartbeat(now)
        if not bridge.heard and diff(now, last_hello) >= hello_ms:
            last_hello = now
            bridge.hello()
        if clock is None:
            time.sleep_ms(5) if hasattr(time, "sleep_ms") else time.sleep(0.005)


def main(framing="line", uart=None, adc_pin=26, device="pico-1"):
    """A ready bridge: readings of one ADC pin and a counter; custom "count" sets it."""
    import machine

    port = machine.UART(uart, 115200) if uart is not None else StdioPort()
    adc = machine.ADC(adc_pin)
    state = {"count": 0}

    def set_count(arg):
        if not isinstance(arg, int) or isinstance(arg, bool) or arg < 0:
            raise ValueError("count needs an integer >= 0")
        state["count"] = arg

    def values():
        state["count"] += 1
        return {"a0": adc.read_u16(), "count": state["count"]}

    bridge = Bridge(port, device, framing=framing, fw="0.1.0", custom={"count": set_count})
    run(bridge, values)
