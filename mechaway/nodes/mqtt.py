"""MQTT nodes: ``MQTTInNode`` (source) and ``MQTTOutNode`` (sink) over a shared connection."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import Annotated, Any, ClassVar, Literal

from msgspec import Meta

from mechaway.codec import DECODERS, ENCODERS, LENIENT_ENCODERS, Codec, describe
from mechaway.errors import StoreUnavailable
from mechaway.nodes.base import (
    TEMPLATE_RE,
    Message,
    Node,
    NodeParams,
    Result,
    SourceNode,
    collecting,
    compile_template,
    emit_collecting,
    get_path,
    receipt,
    split_path,
)
from mechaway.nodes.context import NodeContext
from mechaway.nodes.registry import register_node

_CONNECTION = Meta(
    description="name of the [mqtt.NAME] connection (default: 127.0.0.1:1883 unless configured)"
)
_QOS = Literal[0, 1, 2]


class MQTTInParams(NodeParams):
    topic: Annotated[
        str,
        Meta(
            description="topic filter: + and # wildcards, $share/GROUP/FILTER for a shared "
            "subscription (checked by the MQTT driver's rules)"
        ),
    ]
    connection: Annotated[str, _CONNECTION] = "default"
    qos: Annotated[
        _QOS,
        Meta(
            description="subscription QoS; with 1 or 2 the PUBACK waits until what the flow "
            "made durable of the message is on disk"
        ),
    ] = 0
    decode: Annotated[
        Codec,
        Meta(description="how payload bytes are decoded: json, msgpack, text or bytes (base64)"),
    ] = "json"

    def __post_init__(self) -> None:
        # the driver's own rules; imported here so daemons without MQTT flows never load it
        from mechaway.drivers.mqtt import check_filter

        check_filter(self.topic)


@register_node("MQTTInNode")
class MQTTInNode(SourceNode[MQTTInParams]):
    """Subscribe to a topic filter; each message becomes ``{payload, topic, qos, retain, ts}``.

    Payloads that do not decode are counted (``decode_errors``), logged once per burst and
    sent to the ``error`` port with the raw payload as base64.
    """

    Params = MQTTInParams
    ports: ClassVar[tuple[str, ...]] = ("out",)

    def __init__(self, node_id: str, params: MQTTInParams, ctx: NodeContext) -> None:
        super().__init__(node_id, params, ctx)
        self._decode = DECODERS[params.decode]
        self._sub: Any = None
        self._conn: Any = None
        self.decode_errors = 0

    async def start(self) -> None:
        self._conn = await self.ctx.services.connection("mqtt", self.params.connection)
        self._sub = self._conn.subscribe(self.params.topic, self.params.qos, self._on_message)

    async def stop(self) -> None:
        if self._sub is not None and self._conn is not None:
            self._conn.unsubscribe(self._sub)
            self._sub = None

    def _on_message(self, m: Any) -> Awaitable[None] | None:
        try:
            payload = self._decode(m.payload)
        except ValueError as exc:
            err = describe(exc)
            self.decode_errors += 1
            st = self.stats
            st.errors += 1
            st.last_error = f"decode ({self.params.decode}) failed on {m.topic}: {err}"
            st.last_error_ts = time.time()
            self.ctx.burst.warning("%s", st.last_error)
            self.emit(
                {
                    "payload": DECODERS["bytes"](m.payload),
                    "topic": m.topic,
                    "ts": time.time(),
                    "error": {"node": self.id, "type": "DecodeError", "message": err},
                },
                "error",
            )
            return None
        msg = {
            "payload": payload,
            "topic": m.topic,
            "qos": m.qos,
            "retain": m.retain,
            "ts": time.time(),
        }
        if m.dup:
            msg["dup"] = True  # a redelivery: the outbox flags it as a possible duplicate
        if m.qos == 0:
            self.emit(msg)
            return self.room() if self.blocked() else None
        # QoS 1/2: the PUBACK waits until what the flow made durable of this message
        # (the outbox's commit) is on disk, and until the flow has room again
        receipts = emit_collecting(self.emit, msg)
        if receipts or self.blocked():
            return self._settle(receipts)
        return None

    async def _settle(self, receipts: list[Awaitable[Any]]) -> None:
        if receipts:
            for result in await asyncio.gather(*receipts, return_exceptions=True):
                # the store could not keep it (disk full): the connection withholds the
                # PUBACK; any other failure was counted by its node and is acknowledged
                if isinstance(result, StoreUnavailable):
                    raise result
        await self.room()

    def status(self) -> dict[str, Any] | None:
        return {"decode_errors": self.decode_errors, "topic": self.params.topic}


def compile_topic(template: str) -> Callable[[Message], str]:
    """``"site/{payload.room}/temp"`` -> a function rendering it from a message."""
    return compile_template(template, str, "topic")


class MQTTOutParams(NodeParams):
    connection: Annotated[str, _CONNECTION] = "default"
    topic: Annotated[
        str,
        Meta(
            min_length=1,
            description="topic, or a template with message fields: out/{topic}, "
            "site/{payload.room} (no + or #)",
        ),
    ] = "{topic}"
    qos: Annotated[
        _QOS,
        Meta(
            description="publish QoS; 1 and 2 are spooled durably while the broker is away, "
            "0 is dropped (counted)"
        ),
    ] = 0
    retain: Annotated[bool, Meta(description="publish with the retain flag")] = False
    encode: Annotated[
        Codec,
        Meta(description="how the value is encoded: json, msgpack, text or bytes (base64 text)"),
    ] = "json"
    property: Annotated[
        str, Meta(description='what is published: a dotted path into the message, "" for all')
    ] = "payload"

    def __post_init__(self) -> None:
        super().__post_init__()
        literal = TEMPLATE_RE.sub("", self.topic)
        if "+" in literal or "#" in literal:
            raise ValueError("a publish topic cannot contain + or #")
        if "{" in literal or "}" in literal:  # alarms/{payload.room: a typo, not a topic
            raise ValueError(
                "unbalanced { or } in the topic template (a field is {name} or {a.b})"
            )
        for m in TEMPLATE_RE.finditer(self.topic):
            if not m.group(1).strip():
                raise ValueError("an empty {} in the topic template names no field")


@register_node("MQTTOutNode")
class MQTTOutNode(Node[MQTTOutParams]):
    """Publish each message (its ``property``, encoded) to a topic rendered from a template.

    A publish is a non-blocking hand-off to the connection, which owns the bounded
    buffers and their policies: QoS 1/2 beyond the in-flight window or while the broker
    is down go to the durable spool (``spool_max``/``spool_overflow``, delivered in order
    on reconnect); QoS 0 is dropped and counted past ``max_write_buffer_bytes`` or while
    offline (``offline_qos0``). So the node is called directly on the hot path, with no
    queue or task of its own in between.

    QoS 1/2 fed by an MQTT QoS 1/2 source: the source's PUBACK waits until this publish
    is acknowledged by its broker or fsynced in the spool (a receipt), so a crash at any
    moment leaves the message with one broker or the other, never only in memory.
    """

    Params = MQTTOutParams
    ports: ClassVar[tuple[str, ...]] = ()

    @classmethod
    def check_flow(cls, nodes: Mapping[str, Any]) -> list[tuple[str, str, str]]:
        """A flow that feeds itself: a publish the same flow's MQTTInNode receives on the
        same connection. ``(level, node id, text)``: an error for a fixed topic that its
        filter matches, a warning for a template that can render such a topic (at run
        time the connection cuts such a loop and reports it)."""
        from mechaway.drivers.mqtt import template_may_match, topic_matches

        ins = [(n.id, n.params) for n in nodes.values() if issubclass(n.cls, MQTTInNode)]
        found: list[tuple[str, str, str]] = []
        for node in nodes.values():
            if not issubclass(node.cls, cls):
                continue
            out = node.params
            fixed = not TEMPLATE_RE.search(out.topic)
            pieces = TEMPLATE_RE.split(out.topic)  # text, field, text, ...
            parts = [p if i % 2 == 0 else None for i, p in enumerate(pieces)]
            for in_id, src in ins:
                if src.connection != out.connection:
                    continue
                where = (
                    f"the flow's own MQTTInNode {in_id!r} ({src.topic}) receives on"
                    f" [mqtt.{out.connection}]"
                )
                if fixed and topic_matches(src.topic, out.topic):
                    text = f"publishes to {out.topic!r}, which {where}: the flow would feed itself"
                    found.append(("error", node.id, text))
                elif not fixed and template_may_match(parts, src.topic):
                    text = (
                        f"topic {out.topic!r} can render a topic {where}: the flow may feed"
                        " itself (at run time such a loop is cut after 8 rounds and reported)"
                    )
                    found.append(("warning", node.id, text))
        return found

    def __init__(self, node_id: str, params: MQTTOutParams, ctx: NodeContext) -> None:
        super().__init__(node_id, params, ctx)
        self._topic = compile_topic(params.topic)
        #: a topic without fields, checked by the params: no rendering, no check per message
        self._fixed = params.topic if not TEMPLATE_RE.search(params.topic) else None
        self._keys = split_path(params.property)
        #: the usual ``property``: one key (``payload``), read without get_path
        key = self._keys[0] if len(self._keys) == 1 else None
        self._key: str | None = key if isinstance(key, str) else None
        self._encode = ENCODERS[params.encode]
        self._encode_lenient = LENIENT_ENCODERS[params.encode]
        self._qos = params.qos
        self._retain = params.retain
        self._conn: Any = None

    async def start(self) -> None:
        self._conn = await self.ctx.services.connection("mqtt", self.params.connection)

    def process(self, msg: Message) -> Result:
        topic = self._fixed
        if topic is None:
            topic = self._topic(msg)
            if not topic or "+" in topic or "#" in topic:
                raise ValueError(f"bad publish topic {topic!r}")
        key = self._key
        if key is not None:
            value = msg.get(key) if type(msg) is dict else get_path(msg, self._keys)
        else:
            value = get_path(msg, self._keys) if self._keys else msg
        try:
            payload = self._encode(value)
        except TypeError:  # e.g. bytes from a msgpack input, into JSON: as base64 text
            payload = self._encode_lenient(value)
        if self._qos and collecting():
            # a QoS 1/2 source upstream holds its PUBACK until this one is safe too
            safe = self._conn.publish(topic, payload, self._qos, self._retain, confirm=True)
            if safe is not None:
                receipt(safe)
            return None
        self._conn.publish(topic, payload, self._qos, self._retain)
        return None
