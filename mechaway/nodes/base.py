"""The node contract every built-in and plugin node type follows.

A node type is a ``Node`` subclass typed by its params struct (typed, defaulted, strict,
every field described with ``msgspec.Meta``) and a ``@register_node("SomethingNode")``
decorator. The struct is the validator, the JSON Schema and the documentation at once::

    class ScaleParams(NodeParams):
        factor: Annotated[float, msgspec.Meta(description="multiply the payload by this")] = 1.0

    @register_node("ScaleNode")
    class ScaleNode(Node[ScaleParams]):  # ``Params`` is ScaleParams; self.params is typed
        def process(self, msg: Message) -> Result:
            return {**msg, "payload": msg["payload"] * self.params.factor}

Kinds:
- ``source``: has no input; produces messages from a task or timer via ``self.emit``.
- ``pure``: ``process(msg)`` is a synchronous call on the hot path. It returns ``None``
  (drop), a message, or a list of ``(port, message)`` pairs. It never mutates ``msg``.
- ``sink``: does I/O. The engine gives it a bounded queue with a declared overflow policy
  and one writer task that awaits ``write(msg)``.
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Annotated, Any, ClassVar, Generic, Literal, Protocol, get_args

import msgspec

if TYPE_CHECKING:
    from typing_extensions import TypeVar

    from mechaway.nodes.context import NodeContext
else:
    from typing import TypeVar

Message = dict[str, Any]
Result = Message | list[tuple[str, Message]] | None


class Emit(Protocol):
    """How a node sends a message on: ``self.emit(msg)`` or ``self.emit(msg, "port")``."""

    def __call__(self, msg: Message, port: str = "out", /) -> None: ...


log = logging.getLogger("mechaway.nodes")


class NodeStats:
    """Per-node counters the engine keeps (and shows in status); nodes may count drops."""

    __slots__ = ("dropped", "errors", "inp", "last_error", "last_error_ts", "out")

    def __init__(self) -> None:
        self.inp = 0
        self.out = 0
        self.errors = 0
        self.dropped = 0
        self.last_error = ""
        self.last_error_ts = 0.0

    def as_dict(self) -> dict[str, Any]:
        return {
            "in": self.inp,
            "out": self.out,
            "errors": self.errors,
            "dropped": self.dropped,
            "last_error": self.last_error or None,
            "last_error_ts": self.last_error_ts or None,
        }


class NodeParams(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """Base for node params: unknown keys are errors, its fields are keyword-only.

    Every field carries ``Annotated[T, msgspec.Meta(description=...)]``: the JSON Schema,
    ``docs/nodes.md`` and an editor's forms are built from it (a test fails for a built-in
    type with an undocumented field). Bounds a schema can state go in the same ``Meta``
    (``ge=``, ``min_length=``); ``__post_init__`` keeps only rules across fields (and the
    descriptions say so), raising ``ValueError``. msgspec does not inherit ``kw_only``: a
    subclass with a required field after a defaulted one (``SinkParams``' queue keys) is
    declared ``class XParams(SinkParams, kw_only=True)``.
    """

    def __post_init__(self) -> None:
        """Cross-field checks (none here); subclasses call ``super().__post_init__()``."""


class NoParams(NodeParams):
    """For node types that take no params."""


Overflow = Literal["drop_oldest", "drop_new", "block"]


class SinkParams(NodeParams):
    """Params every sink has: its queue bound and what happens when the queue is full.

    ``block`` makes the flow's sources wait for room (backpressure reaches the producer,
    e.g. an MQTT QoS 1 PUBACK is delayed); the drop policies count every drop.
    """

    queue_size: Annotated[
        int, msgspec.Meta(ge=1, description="messages waiting for the sink's writer, at most")
    ] = 1000
    overflow: Annotated[
        Overflow,
        msgspec.Meta(
            description="when the queue is full: block (the flow's sources wait for room), "
            "drop_oldest or drop_new (every drop counted)"
        ),
    ] = "drop_oldest"


async def _no_wait() -> None:
    return None


def _never() -> bool:
    return False


def _unbound_emit(msg: Message, port: str = "out") -> None:
    raise RuntimeError("node is not deployed: emit is not bound")


# The params type of a node: ``Node[RateLimitParams]`` types ``self.params``. A bare ``Node``
# means ``Node[Any]`` (the default, seen by type checkers only: ``typing.TypeVar`` takes
# ``default=`` from Python 3.13 on).
if TYPE_CHECKING:
    P = TypeVar("P", bound=NodeParams, default=Any)
else:
    P = TypeVar("P", bound=NodeParams)


class Node(Generic[P]):
    """Base class of every node type: ``class XNode(Node[XParams])``, overriding what it needs.

    ``Params`` is the params struct: taken from the type argument (``Node[XParams]``), or
    set in the class body (then it must be a subclass of the type argument, if any).
    """

    type_name: ClassVar[str] = ""
    Params: ClassVar[type[NodeParams]] = NoParams
    kind: ClassVar[Literal["source", "pure", "sink"]] = "pure"
    ports: ClassVar[tuple[str, ...]] = ("out",)
    #: True when the node keeps state worth persisting (``persist: true`` in its params)
    stateful: ClassVar[bool] = False

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        for base in cls.__dict__.get("__orig_bases__", ()):
            args = get_args(base)
            arg = args[0] if args else None
            if not (isinstance(arg, type) and issubclass(arg, NodeParams)):
                continue  # a bare base, or a type variable (a generic intermediate class)
            declared = cls.__dict__.get("Params")
            if declared is None:
                cls.Params = arg
            elif not (isinstance(declared, type) and issubclass(declared, arg)):
                raise TypeError(
                    f"{cls.__name__}: Params = {declared!r} is not a {arg.__name__}, its "
                    "type argument"
                )

    def __init__(self, node_id: str, params: P, ctx: NodeContext) -> None:
        self.id = node_id
        self.params = params
        self.ctx = ctx
        #: bound by the engine to route a message from this node's output port
        self.emit: Emit = _unbound_emit
        #: bound by the engine: sources await it before emitting so ``block`` sinks push back
        self.room: Callable[[], Awaitable[None]] = _no_wait
        #: bound by the engine: True while a ``block`` sink of the flow is full
        self.blocked: Callable[[], bool] = _never
        #: the engine's counters for this node (kept across hot swaps)
        self.stats = NodeStats()

    # -- declared shape -------------------------------------------------------------------
    @classmethod
    def output_ports(cls, params: P) -> tuple[str, ...]:
        """Ports this node can emit on with these params (``error`` is always allowed)."""
        return cls.ports

    @classmethod
    def check(cls, params: P) -> list[str]:
        """Deploy-time checks beyond the schema (e.g. compile a script). Return problems."""
        return []

    @classmethod
    def self_starting(cls, params: P) -> bool:
        """True when, with these params, the node produces messages on its own (a source,
        or a poller with an interval): a flow needs at least one such node."""
        return cls.kind == "source"

    @classmethod
    def claims(cls, params: P) -> tuple[str, ...]:
        """Hardware this node holds alone while it runs (``"GPIO pin 17"``): two running
        nodes of one flow claiming the same is a validation error naming both."""
        return ()

    # -- lifecycle ------------------------------------------------------------------------
    async def start(self) -> None:
        """Acquire resources, start tasks. Called before the node receives messages."""

    async def stop(self) -> None:
        """Release resources. Idempotent; bounded by the engine's stop timeout."""

    # -- the hot path ---------------------------------------------------------------------
    def process(self, msg: Message) -> Result:
        """Pure nodes: transform one message. Default passes it through."""
        return msg

    async def write(self, msg: Message) -> Result:
        """Sinks: perform the I/O for one message; may return a result to route onwards."""
        return None

    # -- state ----------------------------------------------------------------------------
    def get_state(self) -> Any:
        """JSON-compatible state for persistence (``None``: nothing to keep)."""
        return None

    def set_state(self, state: Any) -> None:
        """Restore what ``get_state`` returned earlier."""

    def status(self) -> dict[str, Any] | None:
        """Extra node-specific figures for ``GET /api/v1/status`` (``None``: nothing)."""
        return None


class SourceNode(Node[P]):
    """A node with no input that emits messages from a task or timer."""

    kind: ClassVar[Literal["source", "pure", "sink"]] = "source"


class SinkNode(Node[P]):
    """A node that does I/O behind a bounded queue (params derive from ``SinkParams``)."""

    kind: ClassVar[Literal["source", "pure", "sink"]] = "sink"
    Params: ClassVar[type[NodeParams]] = SinkParams
    ports: ClassVar[tuple[str, ...]] = ()


# -- durability receipts ----------------------------------------------------------------------
# A source that must not acknowledge its producer before the message is durable (MQTT QoS 1:
# the PUBACK) dispatches inside ``collect_receipts``; a node that makes the message durable
# asynchronously (the outbox's group commit) registers the future with ``receipt``. The
# dispatch is synchronous and depth-first, so one module-level collector is exact.
_collector: list[Awaitable[Any]] | None = None


def receipt(done: Awaitable[Any]) -> None:
    """Register ``done``: the current source's acknowledgement waits for it."""
    if _collector is not None:
        _collector.append(done)


def collecting() -> bool:
    """True while a source that waits for receipts dispatches (``emit_collecting``)."""
    return _collector is not None


def emit_collecting(emit: Emit, msg: Message) -> list[Awaitable[Any]]:
    """``emit(msg)`` and return the receipts registered while it ran."""
    global _collector
    outer: list[Awaitable[Any]] | None = _collector
    mine: list[Awaitable[Any]] = []
    _collector = mine
    try:
        emit(msg)
    finally:
        _collector = outer
    return mine


def now() -> float:
    """Wall-clock epoch seconds, the ``ts`` of new messages."""
    return time.time()


def get_path(obj: Any, keys: tuple[str | int, ...], default: Any = None) -> Any:
    """Follow ``keys`` into nested dicts/lists; ``default`` where the path does not exist."""
    for k in keys:
        try:
            obj = obj[k]
        except (KeyError, IndexError, TypeError):
            return default
    return obj


_INDEX_RE = re.compile(r"-?[0-9]+")


def split_path(path: str) -> tuple[str | int, ...]:
    """``"payload.values[2].x"`` -> ``("payload", "values", 2, "x")``."""
    out: list[str | int] = []
    for part in path.replace("]", "").replace("[", ".").split("."):
        if part == "":
            continue
        # ASCII digits only: str.isdigit() also accepts "²", and "--1" strips to "1"
        out.append(int(part) if _INDEX_RE.fullmatch(part) else part)
    return tuple(out)


#: a field of a message template: ``{payload.room}``
TEMPLATE_RE = re.compile(r"\{([^{}]+)\}")


def compile_template(
    template: str, fmt: Callable[[Any], str] = str, what: str = "template"
) -> Callable[[Message], str]:
    """``"site/{payload.room}/temp"`` -> a function rendering it from a message: each
    ``{path}`` is the value at that path, as ``fmt`` writes it; a missing (or null) field
    is a ``ValueError`` naming it. A template without fields renders itself, no lookups."""
    parts: list[str | tuple[str | int, ...]] = []
    pos = 0
    for m in TEMPLATE_RE.finditer(template):
        parts.append(template[pos : m.start()])
        parts.append(split_path(m.group(1).strip()))
        pos = m.end()
    parts.append(template[pos:])
    if len(parts) == 1:
        return lambda msg: template

    def render(msg: Message) -> str:
        out = []
        for p in parts:
            if isinstance(p, str):
                out.append(p)
                continue
            v = get_path(msg, p)
            if v is None:
                raise ValueError(f"{what} template field {'.'.join(map(str, p))} is missing")
            out.append(fmt(v))
        return "".join(out)

    return render

