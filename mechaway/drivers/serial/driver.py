"""The serial driver: one ``[serial.NAME]`` port shared by the nodes naming it.

pyserial opens and configures the port (on the port's own thread: an open can block);
then the driver reads the file descriptor itself, in bulk, from the event loop
(``add_reader`` + ``os.read`` of whatever is there) and splits frames with the protocol's
framers (``protocol.py``). pyserial's ``readline()`` costs one syscall per byte, and
pyserial-asyncio-fast's write path can spin after a partial write under load, so neither
is on the data path. Writes go to the descriptor directly, the rest of a partial write
waits in a bounded buffer for the descriptor to be writable.

Every connection attempt is one ``_Link`` (descriptor, framer, write buffer, commands in
flight), owned by the layer's ``Supervisor``: a port that vanishes (unplugged: the read
fails or hits end of file) ends the link, the supervisor reopens the *path* with backoff,
so a ``/dev/serial/by-id/...`` link that comes back pointing at another ``ttyUSBn`` is
followed. A new link starts with a new framer: a frame cut by the unplug is dropped
(``partial_dropped``), never glued to the next link's bytes, and every frame is handed to
the nodes once, with a sequence number that only grows (``Received.seq``).

With ``bridge`` (the mechaway bridge protocol, firmware-bridges/PROTOCOL.md) the driver
decodes each frame once into a protocol message; ``hello``, ``heartbeat``, ``ack`` and
``error`` feed the status and the commands waiting for their ack; the nodes get the
decoded message. Writes are never queued across an outage: while the port is away a
write raises ``NotConnected`` (a stale "pump on" is worse than none).
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import os
import time
from collections.abc import Awaitable, Callable
from typing import Annotated, Any, Literal

import msgspec

from mechaway.drivers.base import (
    Bus,
    Driver,
    DriverEnv,
    DriverSettings,
    LinkFailed,
    Supervisor,
    register_driver,
)
from mechaway.drivers.serial.protocol import (
    ERROR_CODES,
    PROTOCOL_VERSION,
    FrameError,
    Framer,
    ProtocolError,
    decode_message,
    encode_frame,
    encode_message,
    encode_payload,
    make_framer,
    validate_message,
)
from mechaway.errors import ConfigError, MechawayError, NotConnected
from mechaway.tasks import OwnedTask

__all__ = [
    "COUNTERS",
    "CommandFailed",
    "Received",
    "SerialDriver",
    "SerialSettings",
    "WriteRefused",
]

#: counters of every serial connection (its status ``counters``); the framing and
#: decoding errors are counted under their protocol codes (``crc``, ``oversize``, ...)
COUNTERS = (
    "frames_in", "bytes_in", "frames_out", "bytes_out", "partial_dropped",
    "writes_dropped", "not_connected", "commands", "acks", "command_errors",
    "command_timeouts", "device_errors", "hellos", "heartbeats", "device_restarts",
    "connect_failures", *sorted(ERROR_CODES),
)  # fmt: skip

#: bytes read per read call (a USB CDC link delivers at most a few KB between reads)
READ_SIZE = 65536
#: a writer waits (backpressure) while this much is buffered for the port
WRITE_HIGH_WATER = 16 * 1024
#: seconds between two hello requests on a new link, and how many (bridge only)
HELLO_EVERY = 2.0
HELLO_TRIES = 5


class SerialSettings(DriverSettings):
    """``[serial.NAME]``: one serial port (USB CDC, a UART, an RS-232 adapter)."""

    port: Annotated[
        str,
        msgspec.Meta(min_length=1, description="device path: /dev/ttyUSB0, /dev/ttyACM0, or "
                     "better /dev/serial/by-id/... (followed when the device comes back "
                     "under another ttyUSBn)"),
    ]
    baudrate: Annotated[
        int, msgspec.Meta(ge=50, le=4_000_000, description="bits per second")
    ] = 115200
    framing: Annotated[
        Literal["line", "cobs"],
        msgspec.Meta(description="line: frames end at \\n (text, JSON lines); cobs: COBS + "
                     "CRC-16 frames ending at 0x00 (the bridge protocol's binary framing)"),
    ] = "line"
    bytesize: Annotated[Literal[5, 6, 7, 8], msgspec.Meta(description="data bits")] = 8
    parity: Annotated[
        Literal["N", "E", "O", "M", "S"],
        msgspec.Meta(description="N(one), E(ven), O(dd), M(ark) or S(pace)"),
    ] = "N"
    stopbits: Annotated[
        float, msgspec.Meta(ge=1, le=2, description="stop bits: 1, 1.5 or 2")
    ] = 1
    max_frame_bytes: Annotated[
        int,
        msgspec.Meta(ge=16, le=1 << 20, description="longest frame accepted (longer ones "
                     "are dropped up to the next delimiter and counted as oversize)"),
    ] = 4096
    bridge: Annotated[
        bool | None,
        msgspec.Meta(description="the device speaks the mechaway bridge protocol "
                     "(firmware-bridges/PROTOCOL.md): frames are decoded once as protocol "
                     "messages, hello/heartbeat/ack/error feed the status, commands wait "
                     "for acks, hello is asked for when the port opens; default: yes with "
                     "cobs framing, no with line"),
    ] = None
    frame_gap: Annotated[
        float,
        msgspec.Meta(ge=0, le=1, description="seconds of silence between two frames sent "
                     "(for devices that need time between commands)"),
    ] = 0.0
    exclusive: Annotated[
        bool,
        msgspec.Meta(description="lock the port so that no other process opens it"),
    ] = True

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.stopbits not in (1, 1.5, 2):
            raise ValueError("stopbits must be 1, 1.5 or 2")

    @property
    def speaks_bridge(self) -> bool:
        return self.bridge if self.bridge is not None else self.framing == "cobs"


class CommandFailed(MechawayError):
    """A bridge command was refused by the device (``code`` from its error message:
    ``bad_pin``, ``bad_op``...) or not acknowledged in time (``code`` ``timeout``)."""

    def __init__(self, message: str, code: str) -> None:
        super().__init__(message)
        self.code = code


class WriteRefused(MechawayError):
    """A frame that cannot be sent as asked (too large, a newline inside a line frame,
    an invalid command). ``kind`` names it for the node's error port."""

    def __init__(self, message: str, kind: str = "bad_frame") -> None:
        super().__init__(message)
        self.kind = kind


class Received:
    """One frame as the driver read it, handed to every subscriber once.

    ``frame``: the content (None for a framing error); ``message``: the decoded protocol
    message (bridge mode, when valid); ``error``: the protocol error code if the frame
    failed (framing: ``crc``, ``oversize``...; bridge decoding: ``json``, ``schema``...);
    ``detail``: why, in words; ``seq``: this connection's frame counter (grows across
    reconnects: no frame is handed out twice); ``ts``: epoch seconds of the read."""

    __slots__ = ("detail", "error", "frame", "message", "seq", "ts")

    def __init__(  # noqa: PLR0917 (one per frame: positional is the cheap call)
        self, frame: bytes | None, message: dict[str, Any] | None, error: str | None,
        detail: str, seq: int, ts: float,
    ) -> None:  # fmt: skip
        self.frame = frame
        self.message = message
        self.error = error
        self.detail = detail
        self.seq = seq
        self.ts = ts


Handler = Callable[[Received], Awaitable[None] | None]

_SERIAL: Any = None


def _pyserial() -> Any:
    """pyserial, imported when a port is first opened."""
    global _SERIAL
    if _SERIAL is None:
        import serial

        _SERIAL = serial
    return _SERIAL


class _Link:
    """One opened port: descriptor, framer, write buffer; ``lost`` says why it ended."""

    def __init__(self, ser: Any, fd: int, framer: Framer, device: str,
                 loop: asyncio.AbstractEventLoop) -> None:  # fmt: skip
        self.ser = ser
        self.fd = fd
        self.framer = framer
        self.device = device
        self.loop = loop
        self.lost: asyncio.Future[str] = loop.create_future()
        self.closed = False
        self.wbuf = bytearray()
        self.drained = asyncio.Event()
        self.drained.set()
        self.hello_seen = False
        self.pending: dict[int, asyncio.Future[dict[str, Any]]] = {}
        self.hello_task: OwnedTask | None = None

    def drop(self, reason: str) -> None:
        if not self.closed:
            self.closed = True
            self.drained.set()  # writers waiting for room see the link is gone
            if not self.lost.done():
                self.lost.set_result(reason)

    def write(self, data: bytes) -> None:
        """Write now what the port takes, buffer the rest (``NotConnected`` if gone)."""
        if self.closed:
            raise NotConnected("the port is closed")
        if not self.wbuf:
            try:
                n = os.write(self.fd, data)
            except BlockingIOError:
                n = 0
            except OSError as err:
                self.drop(f"write failed: {err.strerror or err}")
                raise NotConnected(f"write failed: {err.strerror or err}") from None
            if n == len(data):
                return
            data = data[n:]
            self.loop.add_writer(self.fd, self._writable)
        self.wbuf += data
        if len(self.wbuf) > WRITE_HIGH_WATER:
            self.drained.clear()

    def _writable(self) -> None:
        try:
            n = os.write(self.fd, self.wbuf)
        except BlockingIOError:
            return
        except OSError as err:
            self.loop.remove_writer(self.fd)
            self.drop(f"write failed: {err.strerror or err}")
            return
        del self.wbuf[:n]
        if len(self.wbuf) <= WRITE_HIGH_WATER:
            self.drained.set()
        if not self.wbuf:
            self.loop.remove_writer(self.fd)

    async def drain(self) -> None:
        """Until the buffer is below the high-water mark (or the link is gone)."""
        if not self.drained.is_set():
            await self.drained.wait()
        if self.closed:
            raise NotConnected("the port closed before the frame was written")


@register_driver("serial")
class SerialDriver(Driver[SerialSettings]):
    """One serial port; see the module docstring."""

    Settings = SerialSettings

    def __init__(self, name: str, settings: SerialSettings, env: DriverEnv | None = None) -> None:
        super().__init__(name, settings, env)
        self.health.counters.update(dict.fromkeys(COUNTERS, 0))
        self.bus = Bus(self.label, settings.frame_gap)
        self.framing = settings.framing
        self.bridge = settings.speaks_bridge
        self._link: _Link | None = None
        self._sup: Supervisor[_Link] | None = None
        self._up = asyncio.Event()
        self._handlers: list[Handler] = []
        self._seq = 0
        self._next_id = 0
        self._resume_task = OwnedTask(f"{self.label}.resume")
        self.device: dict[str, Any] | None = None  # the last hello
        self.device_at: float | None = None
        self.last_frame_at: float | None = None
        self.uptime_ms: int | None = None
        self._last_reading_seq: int | None = None

    # -- lifecycle ------------------------------------------------------------------------
    async def start(self) -> None:
        """Open the port in the background (``status()`` says how it goes); ``ConfigError``
        if pyserial is not installed."""
        if self._sup is not None:
            return
        try:
            _pyserial()
        except ImportError as err:
            raise ConfigError(
                f"{self.label}: pyserial is not installed (pip install 'mechaway[hardware]')"
            ) from err
        self._sup = Supervisor(
            self.label, self.health, self.settings, open=self._open, lost=self._lost,
            up=self._on_up, release=self._release, logger=self.log,
        )  # fmt: skip
        self._sup.start()

    async def close(self, timeout: float = 5.0) -> None:
        sup, self._sup = self._sup, None
        if sup is not None:
            await asyncio.wait_for(sup.stop(), timeout)
        await self._resume_task.stop()
        self.bus.close()
        self.health.set("closed")

    @property
    def connected(self) -> bool:
        return self._link is not None and not self._link.closed

    async def wait_connected(self, timeout: float) -> None:
        """Until the port is open; ``NotConnected`` after ``timeout`` seconds."""
        await self._await_up(self._up, timeout)

    def _open_port(self) -> tuple[Any, str]:
        """On the bus thread: open and configure the port (blocking calls)."""
        serial = _pyserial()
        s = self.settings
        stopbits = {1: serial.STOPBITS_ONE, 1.5: serial.STOPBITS_ONE_POINT_FIVE,
                    2: serial.STOPBITS_TWO}[s.stopbits]  # fmt: skip
        try:
            ser = serial.Serial(
                s.port, baudrate=s.baudrate, bytesize=s.bytesize, parity=s.parity,
                stopbits=stopbits, timeout=0, write_timeout=0, exclusive=s.exclusive,
            )  # fmt: skip
        except (serial.SerialException, OSError, ValueError) as err:
            raise _classify(s.port, err) from None
        return ser, os.path.realpath(s.port)

    async def _open(self) -> _Link:
        ser, device = await self.bus.call(self._open_port)
        fd = ser.fileno()
        os.set_blocking(fd, False)
        framer = make_framer(self.framing, self.settings.max_frame_bytes)
        return _Link(ser, fd, framer, device, asyncio.get_running_loop())

    def _on_up(self, link: _Link) -> None:
        self._link = link
        link.loop.add_reader(link.fd, self._readable, link)
        self._up.set()
        self.log.debug("%s: %s open (%s)", self.label, self.settings.port, link.device)
        if self.bridge:
            link.hello_task = OwnedTask(f"{self.label}.hello")
            link.hello_task.start(lambda: self._ask_hello(link))

    async def _lost(self, link: _Link) -> str:
        return await link.lost

    async def _release(self, link: _Link) -> None:
        link.closed = True
        if self._link is link:
            self._link = None
            self._up.clear()
        loop = link.loop
        loop.remove_reader(link.fd)
        loop.remove_writer(link.fd)
        if link.hello_task is not None:
            await link.hello_task.stop()
        if link.framer.pending:
            self.health.count("partial_dropped")
        if link.wbuf:
            self.health.count("writes_dropped")
            link.wbuf.clear()
        for fut in link.pending.values():
            if not fut.done():
                fut.set_exception(NotConnected(f"{self.label}: the port went away"))
                fut.exception()
        link.pending.clear()
        link.drained.set()
        with contextlib.suppress(OSError):
            await self.bus.call(link.ser.close)

    # -- reading --------------------------------------------------------------------------
    def subscribe(self, handler: Handler) -> Handler:
        """``handler(received)`` for every frame from now on (and every framing error).
        It may return an awaitable: reading pauses until it completes (backpressure)."""
        self._handlers.append(handler)
        return handler

    def unsubscribe(self, handler: Handler) -> None:
        if handler in self._handlers:
            self._handlers.remove(handler)

    def _readable(self, link: _Link) -> None:
        try:
            data = os.read(link.fd, READ_SIZE)
        except BlockingIOError:
            return
        except OSError as err:  # EIO: unplugged, or the other end of a pty closed
            link.loop.remove_reader(link.fd)
            link.drop(f"read failed: {err.strerror or err} (device gone?)")
            return
        if not data:
            link.loop.remove_reader(link.fd)
            link.drop("end of file (device gone?)")
            return
        self.health.counters["bytes_in"] += len(data)
        items = link.framer.feed(data)
        if items:
            self._dispatch(link, items)

    def _dispatch(self, link: _Link, items: list[bytes | FrameError]) -> None:
        ts = time.time()
        self.last_frame_at = ts
        counters = self.health.counters
        handlers = self._handlers
        bridge = self.bridge
        framing = self.framing
        waits: list[Awaitable[None]] | None = None
        for item in items:
            self._seq += 1
            if type(item) is bytes:
                counters["frames_in"] += 1
                if bridge:
                    try:
                        msg = decode_message(framing, item)
                    except ProtocolError as err:
                        counters[err.code] += 1
                        rec = Received(item, None, err.code, err.detail, self._seq, ts)
                    else:
                        if msg["t"] != "reading":
                            self._protocol(link, msg)
                        elif "seq" in msg:
                            self._reading_seq(msg["seq"])
                        rec = Received(item, msg, None, "", self._seq, ts)
                else:
                    rec = Received(item, None, None, "", self._seq, ts)
            else:
                code = item.code  # type: ignore[union-attr]  # (not bytes: a FrameError)
                counters[code] += 1
                rec = Received(None, None, code, _FRAME_ERRORS[code], self._seq, ts)
            for handler in handlers:
                try:
                    wait = handler(rec)
                except Exception as err:  # a node's bug must not stop the port
                    self.burst.warning("%s: a subscriber failed: %r", self.label, err)
                    continue
                if wait is not None:
                    (waits := waits or []).append(wait)
        if waits:
            self._pause(link, waits)

    def _pause(self, link: _Link, waits: list[Awaitable[None]]) -> None:
        """A subscriber asked for time (its flow is full): stop reading until it has room;
        the device is held back by the OS buffer (and USB flow control)."""
        link.loop.remove_reader(link.fd)

        async def resume() -> None:
            try:
                await asyncio.gather(*waits, return_exceptions=True)
            finally:
                if self._link is link and not link.closed:
                    link.loop.add_reader(link.fd, self._readable, link)

        self._resume_task = OwnedTask(f"{self.label}.resume")
        self._resume_task.start(resume)

    def _reading_seq(self, seq: int) -> None:
        last = self._last_reading_seq
        if last is not None and seq < last:
            self.health.count("device_restarts")
        self._last_reading_seq = seq

    def _protocol(self, link: _Link, msg: dict[str, Any]) -> None:
        kind = msg["t"]
        if kind == "heartbeat":
            self.health.count("heartbeats")
            self.uptime_ms = msg["uptime_ms"]
        elif kind == "hello":
            self.health.count("hellos")
            link.hello_seen = True
            if self.device is not None and self.device != msg:
                self.log.info("%s: device is now %s", self.label, msg.get("device"))
            self.device = msg
            self.device_at = time.time()
            self._last_reading_seq = None  # a hello starts the device's count anew
        elif kind in ("ack", "error"):
            cmd_id = msg.get("id")
            fut = link.pending.pop(cmd_id, None) if cmd_id is not None else None
            if fut is None:
                if kind == "error":
                    self.health.count("device_errors")
                    self.burst.warning("%s: the device reports %s%s", self.label,
                                       msg["code"], f" ({msg['msg']})" if "msg" in msg else "")
                return
            if not fut.done():
                fut.set_result(msg)

    async def _ask_hello(self, link: _Link) -> None:
        """Bytes sent before the port was opened are lost (a board also resets when the
        port opens): ask for hello until one comes, a few times."""
        delim = b"\n" if self.framing == "line" else b"\x00"
        for _ in range(HELLO_TRIES):
            if link.hello_seen or link.closed:
                return
            try:
                link.write(delim + encode_message(
                    self.framing,
                    {"v": PROTOCOL_VERSION, "t": "cmd", "id": self._new_id(), "op": "hello"},
                ))  # fmt: skip
            except NotConnected:
                return
            await asyncio.sleep(HELLO_EVERY)

    # -- writing --------------------------------------------------------------------------
    def _new_id(self) -> int:
        self._next_id = (self._next_id + 1) & 0xFFFFFFFF
        return self._next_id

    def _live_link(self) -> _Link:
        link = self._link
        if link is None or link.closed:
            self.health.count("not_connected")
            raise NotConnected(
                f"{self.label}: not connected ({self.health.last_error or 'connecting'})"
            )
        return link

    def frame(self, payload: bytes) -> bytes:
        """``payload`` as one frame on the wire in this port's framing (``WriteRefused``
        when it cannot be one: too long, or a newline inside a line frame)."""
        if len(payload) > self.settings.max_frame_bytes:
            raise WriteRefused(
                f"frame of {len(payload)} bytes exceeds max_frame_bytes "
                f"({self.settings.max_frame_bytes})", "oversize")  # fmt: skip
        try:
            return encode_frame(self.framing, payload)
        except ValueError as err:
            raise WriteRefused(str(err)) from None

    async def send(self, payload: bytes) -> None:
        """Send one frame; waits while the port's buffer is full. ``NotConnected`` while
        the port is away (nothing is kept for later)."""
        wire = self.frame(payload)
        async with self.bus.transaction():
            link = self._live_link()
            await self._write(link, wire)

    async def _write(self, link: _Link, wire: bytes) -> None:
        try:
            link.write(wire)
        except NotConnected:
            self.health.count("not_connected")
            raise
        counters = self.health.counters
        counters["frames_out"] += 1
        counters["bytes_out"] += len(wire)
        await link.drain()

    async def command(self, cmd: dict[str, Any], timeout: float = 2.0) -> dict[str, Any]:
        """Send a bridge command (``{"op": "pin", "pin": 13, "value": 1}``; ``t``, ``v`` and
        ``id`` are filled in) and wait for its ack, which is returned. ``CommandFailed``
        when the device answers with an error or not within ``timeout``;
        ``WriteRefused`` for a command the protocol does not allow."""
        if not self.bridge:
            raise WriteRefused(f"{self.label} does not speak the bridge protocol (bridge)",
                               "not_bridge")  # fmt: skip
        body = {k: v for k, v in cmd.items() if k not in ("v", "t", "id")}
        msg = {"v": PROTOCOL_VERSION, "t": "cmd", "id": self._new_id(), **body}
        try:
            validate_message(msg)
        except ProtocolError as err:
            raise WriteRefused(f"invalid command: {err.detail}", "bad_command") from None
        payload = encode_payload(self.framing, msg)
        limit = (self.device or {}).get("max_frame")
        if isinstance(limit, int) and len(payload) > limit:
            raise WriteRefused(f"command of {len(payload)} bytes exceeds the device's "
                               f"max_frame ({limit})", "oversize")  # fmt: skip
        wire = self.frame(payload)
        self.health.count("commands")
        async with self.bus.transaction():
            link = self._live_link()
            fut: asyncio.Future[dict[str, Any]] = link.loop.create_future()
            link.pending[msg["id"]] = fut
            try:
                await self._write(link, wire)
                reply = await asyncio.wait_for(fut, timeout)
            except TimeoutError:
                self.health.count("command_timeouts")
                raise CommandFailed(f"{self.label}: no ack for command {msg['id']} "
                                    f"({body.get('op')}) within {timeout} s", "timeout") from None
            finally:
                link.pending.pop(msg["id"], None)
        if reply["t"] == "error":
            self.health.count("command_errors")
            text = f" ({reply['msg']})" if "msg" in reply else ""
            raise CommandFailed(f"{self.label}: the device refused command {msg['id']} "
                                f"({body.get('op')}): {reply['code']}{text}", reply["code"])
        self.health.count("acks")
        return reply

    # -- status ---------------------------------------------------------------------------
    def extra_status(self) -> dict[str, Any]:
        link = self._link
        out: dict[str, Any] = {
            "port": self.settings.port,
            "device_path": link.device if link is not None else None,
            "framing": self.framing,
            "baudrate": self.settings.baudrate,
            "bridge": self.bridge,
            "last_frame_ago": (
                round(time.time() - self.last_frame_at, 3) if self.last_frame_at else None
            ),
            "write_buffered": len(link.wbuf) if link is not None else 0,
        }
        if self.bridge:
            out["device"] = self.device
            out["device_uptime_ms"] = self.uptime_ms
        return out


_FRAME_ERRORS = {
    "oversize": "frame longer than max_frame_bytes (dropped up to the next delimiter)",
    "cobs": "invalid COBS encoding",
    "short": "frame too short to carry a CRC",
    "crc": "CRC-16 does not match",
    "msgpack": "not one msgpack value",
    "utf8": "not UTF-8",
    "json": "not JSON",
    "schema": "not a protocol message",
    "version": "unsupported protocol version",
}


def _classify(port: str, err: BaseException) -> LinkFailed:
    """A failed open, sorted for the once-per-burst log."""
    code = getattr(err, "errno", None)
    text = str(err)
    if code == errno.ENOENT or "No such file" in text:
        return LinkFailed("absent", f"{port}: no such device (unplugged?)")
    if code in (errno.EACCES, errno.EPERM) or "Permission denied" in text:
        return LinkFailed("refused", f"{port}: permission denied (is the daemon's user in "
                          "the dialout group?)")  # fmt: skip
    if code in (errno.EBUSY, errno.EAGAIN) or "exclusively lock" in text:
        return LinkFailed("busy", f"{port}: in use by another process")
    if isinstance(err, ValueError):
        return LinkFailed("refused", f"{port}: {text}")
    return LinkFailed("unreachable", f"{port}: {text}")

