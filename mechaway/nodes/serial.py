"""Serial nodes: ``SerialInNode`` (one message per frame) and ``SerialOutNode`` (one frame
per message) over a shared ``[serial.NAME]`` port (``SerialDriver``).

What cannot become a message (a framing error: CRC, oversize, bad COBS; a frame that does
not decode as asked: not JSON, not UTF-8, no regex match) never raises through the flow:
it is counted in the node's status (``failures`` by kind), logged once per burst and sent
to the node's ``error`` port as ``{payload: the frame as base64 or null, topic, connection,
ts, error: {node, type, kind, message}}``. The port's framer has already resynchronised.
"""

from __future__ import annotations

import base64
import re
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Annotated, Any, ClassVar, Literal

import msgspec
import orjson

from mechaway.codec import DECODERS
from mechaway.errors import MechawayError, NotConnected, error_text
from mechaway.nodes.base import (
    Message,
    NodeParams,
    Result,
    SinkNode,
    SinkParams,
    SourceNode,
    get_path,
    split_path,
)
from mechaway.nodes.registry import register_node

if TYPE_CHECKING:
    from mechaway.drivers.serial.driver import Received, SerialDriver
    from mechaway.nodes.context import NodeContext

Connection = Annotated[
    str,
    msgspec.Meta(min_length=1, description="name of the [serial.NAME] connection to use"),
]

_MISSING = object()
_NUMBER = re.compile(r"[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?")


class SerialInParams(NodeParams):
    """How each frame becomes a payload."""

    connection: Connection = "default"
    decode: Annotated[
        Literal["json", "text", "csv", "regex", "bytes"],
        msgspec.Meta(description="json: the frame is structured data (JSON on a line port, "
                     "msgpack on a cobs port; on a bridge port, protocol messages); text: "
                     "UTF-8 text; csv: fields split by delimiter; regex: the named groups of "
                     "pattern; bytes: base64 text"),
    ] = "json"
    pattern: Annotated[
        Annotated[str, msgspec.Meta(min_length=1, max_length=1000)] | None,
        msgspec.Meta(description="decode regex: a Python regular expression with named "
                     "groups, searched in each frame; the payload maps group names to what "
                     "they matched"),
    ] = None
    delimiter: Annotated[
        str, msgspec.Meta(min_length=1, max_length=1, description="decode csv: field separator")
    ] = ","
    columns: Annotated[
        list[Annotated[str, msgspec.Meta(min_length=1)]],
        msgspec.Meta(max_length=256, description="decode csv: field names (the payload is "
                     "then a map, extra fields are dropped, missing ones null); none: a list"),
    ] = msgspec.field(default_factory=list)
    numbers: Annotated[
        bool,
        msgspec.Meta(description="decode csv and regex: fields that read as numbers become "
                     "numbers"),
    ] = True
    messages: Annotated[
        Literal["readings", "all"],
        msgspec.Meta(description="bridge ports: readings (payload: the reading's values; "
                     "hello, heartbeat, ack and error go to the connection's status) or all "
                     "(every protocol message, payload: the message, topic ends with its "
                     "type)"),
    ] = "readings"

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.decode == "regex":
            if self.pattern is None:
                raise ValueError("decode regex needs a pattern")
            try:
                compiled = re.compile(self.pattern)
            except re.error as err:
                raise ValueError(f"pattern: {err}") from None
            if not compiled.groupindex:
                raise ValueError("pattern: name the groups to keep, e.g. (?P<temp>[0-9.]+)")
        elif self.pattern is not None:
            raise ValueError("pattern is for decode regex only")


def _number(text: str) -> Any:
    if _NUMBER.fullmatch(text):
        try:
            return int(text)
        except ValueError:
            return float(text)
    return text


class FrameDecodeError(MechawayError):
    """A frame that does not decode as the node asks; ``kind``: json, utf8, no_match..."""

    def __init__(self, message: str, kind: str) -> None:
        super().__init__(message)
        self.kind = kind


def _utf8(frame: bytes) -> str:
    try:
        return frame.decode("utf-8")
    except UnicodeDecodeError as err:
        raise FrameDecodeError(f"not UTF-8 at byte {err.start}", "utf8") from None


def make_decoder(params: SerialInParams, framing: str) -> Callable[[bytes], Any]:
    """The frame -> payload function of these params on a port of this framing."""
    decode = params.decode
    if decode == "bytes":
        return lambda frame: base64.b64encode(frame).decode("ascii")
    if decode == "text":
        return _utf8
    if decode == "json":
        if framing == "cobs":
            unpack = DECODERS["msgpack"]

            def structured(frame: bytes) -> Any:
                try:
                    return unpack(frame)
                except ValueError as err:
                    raise FrameDecodeError(str(err), "msgpack") from None

            return structured

        def json_line(frame: bytes) -> Any:
            try:
                return orjson.loads(frame)
            except orjson.JSONDecodeError as err:
                _utf8(frame)  # not UTF-8 is the better reason
                raise FrameDecodeError(f"not JSON: {err}", "json") from None

        return json_line
    numbers = params.numbers
    if decode == "csv":
        import csv  # only flows that read CSV pay for it

        delim = params.delimiter
        columns = params.columns

        def fields(frame: bytes) -> Any:
            text = _utf8(frame)
            row = next(csv.reader([text], delimiter=delim)) if '"' in text else text.split(delim)
            values = [_number(f.strip()) for f in row] if numbers else row
            if not columns:
                return values
            return {c: values[i] if i < len(values) else None for i, c in enumerate(columns)}

        return fields
    assert params.pattern is not None
    pattern = re.compile(params.pattern)

    def groups(frame: bytes) -> Any:
        m = pattern.search(_utf8(frame))
        if m is None:
            raise FrameDecodeError("the pattern does not match", "no_match")
        found = m.groupdict()
        if numbers:
            return {k: _number(v) if v is not None else None for k, v in found.items()}
        return found

    return groups


class _Failures:
    """What both node types share: failures counted by kind, logged, sent to ``error``."""

    id: str
    ctx: NodeContext
    stats: Any
    emit: Any
    _connection: str

    def _fail(self, base: Message, kind: str, err_type: str, text: str) -> None:
        self.failures[kind] = self.failures.get(kind, 0) + 1
        st = self.stats
        st.errors += 1
        st.last_error = f"{kind}: {text}"
        st.last_error_ts = time.time()
        self.ctx.burst.warning("serial[%s]: %s", self._connection, st.last_error)
        error = {"node": self.id, "type": err_type, "kind": kind, "message": text,
                 "connection": self._connection}  # fmt: skip
        self.emit({**base, "error": error}, "error")

    failures: dict[str, int]


@register_node("SerialInNode")
class SerialInNode(_Failures, SourceNode[SerialInParams]):
    """One message per frame of a serial port: ``{payload, topic: "serial/NAME", connection,
    ts}``. On a bridge port (``[serial.NAME] bridge``), with decode json, readings become
    ``{payload: values, topic: "serial/NAME/reading", seq, device, connection, ts}``."""

    ports: ClassVar[tuple[str, ...]] = ("out",)

    def __init__(self, node_id: str, params: SerialInParams, ctx: NodeContext) -> None:
        super().__init__(node_id, params, ctx)
        self._connection = params.connection
        self._drv: SerialDriver | None = None
        self._handler: Any = None
        self._decode: Callable[[bytes], Any] = _utf8
        self._topic = f"serial/{params.connection}"
        self.failures = {}
        self.frames = 0

    async def start(self) -> None:
        from mechaway.drivers.serial.driver import SerialDriver

        drv = await self.ctx.services.connection(SerialDriver, self._connection)
        self._drv = drv
        self._decode = make_decoder(self.params, drv.framing)
        protocol = drv.bridge and self.params.decode == "json"
        self._handler = drv.subscribe(self._on_protocol if protocol else self._on_frame)

    async def stop(self) -> None:
        if self._drv is not None and self._handler is not None:
            self._drv.unsubscribe(self._handler)
            self._handler = None

    def _room(self) -> Awaitable[None] | None:
        return self.room() if self.blocked() else None

    def _bad(self, rec: Received, kind: str, text: str, err_type: str) -> None:
        frame = rec.frame
        self._fail({"payload": base64.b64encode(frame).decode("ascii") if frame else None,
                    "topic": self._topic, "connection": self._connection, "ts": rec.ts},
                   kind, err_type, text)  # fmt: skip

    def _on_frame(self, rec: Received) -> Awaitable[None] | None:
        frame = rec.frame
        if frame is None:
            self._bad(rec, rec.error or "frame", rec.detail, "FrameError")
            return None
        try:
            payload = self._decode(frame)
        except FrameDecodeError as err:
            self._bad(rec, err.kind, str(err), "DecodeError")
            return None
        self.frames += 1
        self.emit({"payload": payload, "topic": self._topic, "connection": self._connection,
                   "ts": rec.ts})  # fmt: skip
        return self._room()

    def _on_protocol(self, rec: Received) -> Awaitable[None] | None:
        msg = rec.message
        if msg is None:
            self._bad(rec, rec.error or "frame", rec.detail,
                      "FrameError" if rec.frame is None else "ProtocolError")  # fmt: skip
            return None
        kind = msg["t"]
        drv = self._drv
        device = drv.device.get("device") if drv is not None and drv.device else None
        if kind == "reading":
            out: Message = {"payload": msg["values"], "topic": f"{self._topic}/reading",
                            "connection": self._connection, "ts": rec.ts}  # fmt: skip
            if "seq" in msg:
                out["seq"] = msg["seq"]
        elif self.params.messages == "all":
            out = {"payload": msg, "topic": f"{self._topic}/{kind}",
                   "connection": self._connection, "ts": rec.ts}  # fmt: skip
        else:
            return None
        if device is not None:
            out["device"] = device
        self.frames += 1
        self.emit(out)
        return self._room()

    def status(self) -> dict[str, Any] | None:
        return {"connection": self._connection, "frames": self.frames,
                "failures": dict(self.failures)}  # fmt: skip


class SerialOutParams(SinkParams):
    """What each message writes."""

    connection: Connection = "default"
    property: Annotated[
        str,
        msgspec.Meta(description='what is written: a dotted path into the message, "" for '
                     "all of it"),
    ] = "payload"
    encode: Annotated[
        Literal["json", "text", "bytes"],
        msgspec.Meta(description="json: structured (JSON on a line port, msgpack on a cobs "
                     "port); text: a string as UTF-8 (anything else as JSON); bytes: base64 "
                     "text, written raw"),
    ] = "json"
    ack_timeout: Annotated[
        float,
        msgspec.Meta(gt=0, le=60, description="bridge ports: seconds to wait for the "
                     "device's ack of a command (a value {t: cmd, op: ...}; its id is "
                     "filled in); the message goes on to out with the ack, or to error"),
    ] = 2.0


@register_node("SerialOutNode")
class SerialOutNode(_Failures, SinkNode[SerialOutParams]):
    """Write one frame per message, in the port's framing. On a bridge port a command
    value (``{t: cmd, op: pin, pin: 13, value: 1}``) is sent with a fresh id and waits for
    its ack: ``{...msg, ack}`` on ``out``, or the device's refusal on ``error``. Nothing is
    kept while the port is away (``not_connected`` on ``error``): no stale command later."""

    ports: ClassVar[tuple[str, ...]] = ("out",)

    def __init__(self, node_id: str, params: SerialOutParams, ctx: NodeContext) -> None:
        super().__init__(node_id, params, ctx)
        self._connection = params.connection
        self._path = split_path(params.property)
        self._drv: SerialDriver | None = None
        self.failures = {}
        self.frames = 0
        self.commands = 0

    async def start(self) -> None:
        from mechaway.drivers.serial.driver import SerialDriver

        self._drv = await self.ctx.services.connection(SerialDriver, self._connection)

    def _payload(self, value: Any, framing: str) -> bytes:
        encode = self.params.encode
        if encode == "bytes":
            if not isinstance(value, str):
                raise ValueError("a bytes value must be base64 text")
            try:
                return base64.b64decode(value, validate=True)
            except ValueError as err:
                raise ValueError(f"invalid base64: {err}") from None
        if encode == "text" and isinstance(value, str):
            return value.encode("utf-8")
        if framing == "cobs" and encode == "json":
            import msgpack

            out: bytes = msgpack.packb(value, use_bin_type=True)
            return out
        return orjson.dumps(value)

    async def write(self, msg: Message) -> Result:
        from mechaway.drivers.serial.driver import CommandFailed, WriteRefused

        drv = self._drv
        assert drv is not None
        value = get_path(msg, self._path, _MISSING) if self._path else msg
        if value is _MISSING:
            self._fail(msg, "missing", "ValueError", f"no {self.params.property} in the message")
            return None
        try:
            if drv.bridge and isinstance(value, dict) and value.get("t") == "cmd":
                self.commands += 1
                reply = await drv.command(value, self.params.ack_timeout)
                return {**msg, "ack": reply}
            await drv.send(self._payload(value, drv.framing))
            self.frames += 1
        except CommandFailed as err:
            self._fail(msg, err.code, "CommandFailed", error_text(err))
        except WriteRefused as err:
            self._fail(msg, err.kind, "WriteRefused", error_text(err))
        except NotConnected as err:
            self._fail(msg, "not_connected", "NotConnected", error_text(err))
        except (ValueError, TypeError) as err:  # not encodable as asked
            self._fail(msg, "bad_value", type(err).__name__, error_text(err))
        return None

    def status(self) -> dict[str, Any] | None:
        return {"connection": self._connection, "frames": self.frames,
                "commands": self.commands, "failures": dict(self.failures)}  # fmt: skip
