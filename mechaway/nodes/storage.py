"""Storage nodes: key-value, telemetry series, vectors, and the durable outbox to the hub.

Every write goes through the store's single writer, coalesced per loop tick. The sinks
(``KVSetNode``, ``StoreNode``, ``VectorStoreNode``) do not wait for each commit before
taking the next message: they keep at most ``max_inflight`` writes uncommitted and count
a failed commit as an error of the node. ``UpstreamNode`` is a pure node on purpose: it
appends synchronously while the producer's ``emit`` is still running, which is what lets
a source await exactly its message's durability (``mechaway.nodes.base.emit_collecting``).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import math
import time
from typing import Annotated, Any, ClassVar, Literal, TypeVar

from msgspec import Meta

from mechaway.errors import StoreError, error_text
from mechaway.nodes.base import (
    Message,
    Node,
    NodeParams,
    Result,
    SinkNode,
    SinkParams,
    get_path,
    receipt,
    split_path,
)
from mechaway.nodes.context import NodeContext
from mechaway.nodes.registry import register_node
from mechaway.store.encode import show
from mechaway.store.kv import KVStore
from mechaway.store.outbox import Outbox, OutboxFull, Policy
from mechaway.store.series import SeriesStore
from mechaway.store.vectors import VectorStore

_MISSING = object()


def _db(node: Node[Any]) -> Any:
    db = node.ctx.services.store
    if db is None:
        raise StoreError(f"{node.type_name} needs the daemon's store (none is configured)")
    return db


def _with(msg: Message, keys: tuple[str | int, ...], value: Any) -> Message:
    """A copy of ``msg`` with ``value`` at the dict path ``keys`` (copying along the path)."""
    names = [k for k in keys if isinstance(k, str)]
    if not keys or len(names) != len(keys):
        raise ValueError(f"output path {keys!r} must name object keys only")
    out = dict(msg)
    cur = out
    for i, k in enumerate(names[:-1]):
        nxt = cur.get(k)
        if isinstance(nxt, dict):
            nxt = dict(nxt)
        elif nxt is None:
            nxt = {}
        else:  # replacing a value the message carries would lose it without a word
            where = ".".join(names[: i + 1])
            raise ValueError(f"cannot write {'.'.join(names)}: {where} is not an object")
        cur[k] = nxt
        cur = nxt
    cur[names[-1]] = value
    return out


def _out_path(path: str) -> tuple[str | int, ...]:
    """An output property path: object keys only (checked when the node is created)."""
    keys = split_path(path)
    if not keys or not all(isinstance(k, str) for k in keys):
        raise ValueError(f"output {path!r} must be a path of object keys, e.g. payload.value")
    return keys


def _key(msg: Message, static: str | None, path: tuple[str | int, ...], where: str) -> str:
    if static is not None:
        return static
    k = get_path(msg, path)
    if isinstance(k, bool) or not isinstance(k, str | int) or k == "":
        raise ValueError(f"{where} is not a usable key: {show(k)}")
    return str(k)


class _Inflight:
    """Writes a sink submitted but whose commit it has not seen: bounded, failures counted."""

    def __init__(self, node: Node[Any], limit: int) -> None:
        self.node = node
        self.limit = limit
        self._live: set[asyncio.Future[Any]] = set()
        self._room = asyncio.Event()
        self._room.set()

    async def add(self, fut: asyncio.Future[Any]) -> None:
        self._live.add(fut)
        fut.add_done_callback(self._done)
        if len(self._live) >= self.limit:
            self._room.clear()
            await self._room.wait()

    def _done(self, fut: asyncio.Future[Any]) -> None:
        self._live.discard(fut)
        if len(self._live) < self.limit:
            self._room.set()
        if fut.cancelled():
            return
        exc = fut.exception()
        if exc is not None:
            st = self.node.stats
            st.errors += 1
            st.last_error = f"{type(exc).__name__}: {error_text(exc)}"
            st.last_error_ts = time.time()
            self.node.ctx.burst.warning("write failed: %s", st.last_error)

    async def drain(self) -> None:
        if self._live:
            await asyncio.gather(*list(self._live), return_exceptions=True)


class StoreSinkParams(SinkParams):
    max_inflight: Annotated[
        int,
        Meta(
            ge=1,
            description="writes handed to the store and not yet committed, at most (then the "
            "sink waits)",
        ),
    ] = 10_000


SP = TypeVar("SP", bound=StoreSinkParams)


class _StoreSink(SinkNode[SP]):
    """A sink that hands writes to the store without waiting for each commit."""

    def __init__(self, node_id: str, params: SP, ctx: NodeContext) -> None:
        super().__init__(node_id, params, ctx)
        self._inflight = _Inflight(self, params.max_inflight)

    async def stop(self) -> None:
        await self._inflight.drain()


_NAMESPACE = Meta(description="key namespace (empty: the flow id)")
_KEY = Meta(description="a fixed key; when unset the key is read from key_property")
_KEY_PROPERTY = Meta(description="dotted path of the key in the message (when key is unset)")


# -- key-value ---------------------------------------------------------------------------------
class KVSetParams(StoreSinkParams):
    namespace: Annotated[str, _NAMESPACE] = ""
    key: Annotated[Annotated[str, Meta(min_length=1)] | None, _KEY] = None
    key_property: Annotated[str, _KEY_PROPERTY] = "topic"
    property: Annotated[
        str, Meta(description="dotted path of what is stored (a null value deletes the key)")
    ] = "payload"
    ttl: Annotated[
        Annotated[float, Meta(gt=0)] | None,
        Meta(description="seconds until the key expires (null: never)"),
    ] = None


@register_node("KVSetNode")
class KVSetNode(_StoreSink[KVSetParams]):
    """Store a message property under a namespaced key, with an optional time to live."""

    def __init__(self, node_id: str, params: KVSetParams, ctx: NodeContext) -> None:
        super().__init__(node_id, params, ctx)
        self._ns = params.namespace or ctx.flow_id
        self._key_path = split_path(params.key_property)
        self._path = split_path(params.property)
        self._kv: KVStore | None = None

    async def start(self) -> None:
        self._kv = KVStore.of(_db(self))

    async def write(self, msg: Message) -> Result:
        assert self._kv is not None, "node not started"
        key = _key(msg, self.params.key, self._key_path, self.params.key_property)
        value = get_path(msg, self._path, _MISSING)
        if value is _MISSING:  # only an explicit null deletes, never a malformed message
            raise ValueError(f"{self.params.property} is missing")
        if value is None:
            fut = self._kv.delete(self._ns, key)
        else:
            fut = self._kv.set(self._ns, key, value, ttl=self.params.ttl)
        await self._inflight.add(fut)
        return None


class KVGetParams(NodeParams):
    namespace: Annotated[str, _NAMESPACE] = ""
    key: Annotated[Annotated[str, Meta(min_length=1)] | None, _KEY] = None
    key_property: Annotated[str, _KEY_PROPERTY] = "topic"
    output: Annotated[
        str,
        Meta(description="where the value goes in the message passed on (object keys only)"),
    ] = "payload"


@register_node("KVGetNode")
class KVGetNode(Node[KVGetParams]):
    """Look a key up: the value goes to ``output`` on ``out``; absent/expired: ``missing``."""

    ports: ClassVar[tuple[str, ...]] = ("out", "missing")

    def __init__(self, node_id: str, params: KVGetParams, ctx: NodeContext) -> None:
        super().__init__(node_id, params, ctx)
        self._ns = params.namespace or ctx.flow_id
        self._key_path = split_path(params.key_property)
        self._out = _out_path(params.output)
        self._kv: KVStore | None = None

    async def start(self) -> None:
        self._kv = KVStore.of(_db(self))

    def process(self, msg: Message) -> Result:
        assert self._kv is not None, "node not started"
        key = _key(msg, self.params.key, self._key_path, self.params.key_property)
        value = self._kv.get(self._ns, key, _MISSING)
        if value is _MISSING:
            return [("missing", msg)]
        return _with(msg, self._out, value)


# -- telemetry series --------------------------------------------------------------------------
class StoreParams(StoreSinkParams):
    series: Annotated[
        Annotated[str, Meta(min_length=1)] | None,
        Meta(description="series name; when unset the message topic names the series"),
    ] = None
    property: Annotated[str, Meta(description="dotted path of the value stored")] = "payload"
    max_age_s: Annotated[
        Annotated[float, Meta(gt=0)] | None,
        Meta(description="keep samples this many seconds (null: the store default, 7 days)"),
    ] = None
    max_bytes: Annotated[
        Annotated[int, Meta(ge=1024)] | None,
        Meta(
            description="keep at most this many accounted bytes (null: the store default, 16 MiB)"
        ),
    ] = None


@register_node("StoreNode")
class StoreNode(_StoreSink[StoreParams]):
    """Append a message property to a named telemetry series (``GET /api/v1/series/NAME``)."""

    def __init__(self, node_id: str, params: StoreParams, ctx: NodeContext) -> None:
        super().__init__(node_id, params, ctx)
        self._path = split_path(params.property)
        self._series: SeriesStore | None = None

    async def start(self) -> None:
        self._series = SeriesStore.of(_db(self))

    async def write(self, msg: Message) -> Result:
        assert self._series is not None, "node not started"
        p = self.params
        name = p.series or msg.get("topic")
        if not isinstance(name, str) or not name:
            raise ValueError("no series name (set series, or send messages with a topic)")
        value = get_path(msg, self._path, _MISSING)
        if value is _MISSING:
            raise ValueError(f"{p.property} is missing")
        ts = msg.get("ts")
        if isinstance(ts, bool) or not isinstance(ts, int | float) or not math.isfinite(ts):
            ts = None
        fut = self._series.append(name, value, ts, max_age_s=p.max_age_s, max_bytes=p.max_bytes)
        await self._inflight.add(fut)
        return None


# -- vectors -----------------------------------------------------------------------------------
_COLLECTION = Meta(min_length=1, description="the vector collection's name")


class VectorStoreParams(StoreSinkParams, kw_only=True):
    collection: Annotated[str, _COLLECTION]
    property: Annotated[str, Meta(description="dotted path of the vector (a list of numbers)")] = (
        "payload"
    )
    key_property: Annotated[
        str | None,
        Meta(
            description="dotted path of a stable key (storing the same key again replaces "
            "the vector)"
        ),
    ] = None
    meta_property: Annotated[
        str | None,
        Meta(description="dotted path of what is kept beside the vector and returned with hits"),
    ] = None
    max_vectors: Annotated[
        Annotated[int, Meta(ge=1)] | None,
        Meta(description="beyond this many vectors in the collection the oldest are deleted"),
    ] = 100_000


@register_node("VectorStoreNode")
class VectorStoreNode(_StoreSink[VectorStoreParams]):
    """Keep an embedding (and optional metadata) in a collection for similarity search."""

    def __init__(self, node_id: str, params: VectorStoreParams, ctx: NodeContext) -> None:
        super().__init__(node_id, params, ctx)
        self._path = split_path(params.property)
        self._key = split_path(params.key_property) if params.key_property else None
        self._meta = split_path(params.meta_property) if params.meta_property else None
        self._vs: VectorStore | None = None

    async def start(self) -> None:
        self._vs = VectorStore.of(_db(self))

    async def write(self, msg: Message) -> Result:
        assert self._vs is not None, "node not started"
        p = self.params
        key = None if self._key is None else _key(msg, None, self._key, str(p.key_property))
        meta = get_path(msg, self._meta) if self._meta is not None else None
        fut = self._vs.add(
            p.collection, get_path(msg, self._path), key=key, meta=meta, max_vectors=p.max_vectors
        )
        await self._inflight.add(fut)
        return None


class VectorQueryParams(SinkParams, kw_only=True):
    collection: Annotated[str, _COLLECTION]
    property: Annotated[
        str, Meta(description="dotted path of the query vector (a list of numbers)")
    ] = "payload"
    k: Annotated[int, Meta(ge=1, le=1000, description="how many nearest vectors to return")] = 5
    metric: Annotated[
        Literal["cosine", "l2"], Meta(description="the distance: cosine or l2 (Euclidean)")
    ] = "cosine"
    output: Annotated[
        str,
        Meta(
            description="where the hits go: [{key, distance, meta}, ...], nearest first "
            "(object keys only)"
        ),
    ] = "neighbors"
    threshold: Annotated[
        float | None,
        Meta(
            description="when the nearest hit is farther than this (or there is none), the "
            "message goes to port anomaly"
        ),
    ] = None


@register_node("VectorQueryNode")
class VectorQueryNode(SinkNode[VectorQueryParams]):
    """k nearest stored vectors (cosine or L2); far from all of them: port ``anomaly``."""

    ports: ClassVar[tuple[str, ...]] = ("out", "anomaly")

    def __init__(self, node_id: str, params: VectorQueryParams, ctx: NodeContext) -> None:
        super().__init__(node_id, params, ctx)
        self._path = split_path(params.property)
        self._out = _out_path(params.output)
        self._vs: VectorStore | None = None

    async def start(self) -> None:
        self._vs = VectorStore.of(_db(self))

    async def write(self, msg: Message) -> Result:
        assert self._vs is not None, "node not started"
        p = self.params
        hits = await self._vs.query(p.collection, get_path(msg, self._path), k=p.k, metric=p.metric)
        out = _with(msg, self._out, [h.as_dict() for h in hits])
        if p.threshold is not None and (not hits or hits[0].distance > p.threshold):
            return [("anomaly", out)]
        return out

    def status(self) -> dict[str, Any] | None:
        return {"backend": self._vs.backend or None} if self._vs is not None else None


# -- the outbox --------------------------------------------------------------------------------
class UpstreamParams(NodeParams):
    topic: Annotated[
        str | None,
        Meta(description="topic stored with the message (null: the message's own topic)"),
    ] = None
    property: Annotated[str, Meta(description="dotted path of what is sent to the hub")] = "payload"
    policy: Annotated[
        Policy,
        Meta(
            description="when the outbox is at its bound: refuse the new message, or evict "
            "the oldest"
        ),
    ] = "reject_new"
    max_messages: Annotated[int, Meta(ge=1, description="the outbox's bound in messages")] = (
        1_000_000
    )
    max_bytes: Annotated[
        int, Meta(ge=1024, description="the outbox's bound in accounted bytes")
    ] = 256 * 1024 * 1024


def _topic_text(topic: Any) -> str:
    """A message topic that is not a ``str``: a number as its text, nothing as ``""``."""
    if topic is None:
        return ""
    if isinstance(topic, int | float | str):  # bool too; a str subclass
        return str(topic)
    raise ValueError(f"topic is not text: {show(topic)}")


@register_node("UpstreamNode")
class UpstreamNode(Node[UpstreamParams]):
    """Queue the message for the hub in the durable outbox (fsynced before acknowledged).

    Emits ``{..., "seq": n}`` on ``out`` once the message is durable. A message flagged
    ``dup: true`` (a producer's retry) is stored with the duplicate flag.
    """

    ports: ClassVar[tuple[str, ...]] = ("out",)

    def __init__(self, node_id: str, params: UpstreamParams, ctx: NodeContext) -> None:
        super().__init__(node_id, params, ctx)
        self._path = split_path(params.property)
        self._outbox: Outbox | None = None
        self._live: set[asyncio.Future[int]] = set()
        self.acked = 0
        self.rejected = 0

    async def start(self) -> None:
        self._outbox = Outbox.of(_db(self))

    def process(self, msg: Message) -> Result:
        assert self._outbox is not None, "node not started"
        p = self.params
        topic = p.topic if p.topic is not None else msg.get("topic", "")
        if type(topic) is not str:
            topic = _topic_text(topic)
        ts = msg.get("ts")
        if isinstance(ts, bool) or not isinstance(ts, int | float) or not math.isfinite(ts):
            ts = None
        fut = self._outbox.append(
            topic,
            get_path(msg, self._path),
            ts=ts,
            dup=bool(msg.get("dup")),
            policy=p.policy,
            max_messages=p.max_messages,
            max_bytes=p.max_bytes,
        )
        self._live.add(fut)
        fut.add_done_callback(functools.partial(self._committed, msg))
        receipt(fut)  # an MQTT QoS 1 source PUBACKs only once this is durable
        return None

    def _committed(self, msg: Message, fut: asyncio.Future[int]) -> None:
        self._live.discard(fut)
        if fut.cancelled():
            return
        exc = fut.exception()
        if exc is None:
            self.acked += 1
            self.emit({**msg, "seq": fut.result()})
            return
        self.rejected += 1
        self.stats.dropped += 1
        if not isinstance(exc, OutboxFull):
            self.stats.errors += 1
        self.ctx.burst.warning("message not queued for the hub: %s", exc)

    async def stop(self) -> None:
        if self._live:
            with contextlib.suppress(Exception):
                await asyncio.gather(*list(self._live), return_exceptions=True)

    def status(self) -> dict[str, Any] | None:
        out: dict[str, Any] = {"acked": self.acked, "rejected": self.rejected}
        if self._outbox is not None:
            with contextlib.suppress(Exception):
                out["outbox"] = self._outbox.state()
        return out


__all__ = [
    "KVGetNode",
    "KVSetNode",
    "StoreNode",
    "UpstreamNode",
    "VectorQueryNode",
    "VectorStoreNode",
]
