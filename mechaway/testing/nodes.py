"""Node types for tests and benchmarks: a collecting sink, a pass-through, a failing node.

Importing this module registers them; the daemon never imports it.
"""

from __future__ import annotations

import asyncio
from typing import Annotated, Any, ClassVar

from msgspec import Meta

from mechaway.nodes.base import (
    Message,
    Node,
    NodeParams,
    NoParams,
    Result,
    SinkNode,
    SinkParams,
    SourceNode,
)
from mechaway.nodes.context import NodeContext
from mechaway.nodes.registry import register_node


class CollectParams(SinkParams):
    delay: Annotated[
        float, Meta(description="seconds each write takes (to test queues and backpressure)")
    ] = 0.0


#: every CollectNode's messages by "flow.node"
COLLECTED: dict[str, list[Message]] = {}


@register_node("CollectNode")
class CollectNode(SinkNode[CollectParams]):
    """Sink that records what it receives in ``COLLECTED["flow.node"]``."""

    def __init__(self, node_id: str, params: CollectParams, ctx: NodeContext) -> None:
        super().__init__(node_id, params, ctx)
        self.got = COLLECTED.setdefault(f"{ctx.flow_id}.{node_id}", [])

    async def write(self, msg: Message) -> Result:
        if self.params.delay:
            await asyncio.sleep(self.params.delay)
        self.got.append(msg)
        return None


@register_node("PassNode")
class PassNode(Node):
    """Pure pass-through (the hop benchmark's unit of work)."""

    def process(self, msg: Message) -> Result:
        return msg


class FailParams(NodeParams):
    on: Annotated[Any, Meta(description="raise when the payload equals this value")] = "boom"


@register_node("FailNode")
class FailNode(Node[FailParams]):
    """Raises on a chosen payload, passes everything else."""

    ports: ClassVar[tuple[str, ...]] = ("out",)

    def process(self, msg: Message) -> Result:
        if msg.get("payload") == self.params.on:
            raise RuntimeError(f"failing on {self.params.on!r}")
        return msg


@register_node("CountNode")
class CountNode(Node[NoParams]):
    """Counts messages in its state (to test that state survives a hot swap)."""

    def __init__(self, node_id: str, params: NoParams, ctx: NodeContext) -> None:
        super().__init__(node_id, params, ctx)
        self.count = 0

    def process(self, msg: Message) -> Result:
        self.count += 1
        return {**msg, "count": self.count}

    def get_state(self) -> Any:
        return self.count

    def set_state(self, state: Any) -> None:
        if isinstance(state, int):
            self.count = state


@register_node("CoreTestBadSourceNode")
class BadSourceNode(SourceNode):
    """A source whose hardware is missing: start() raises."""

    async def start(self) -> None:
        raise RuntimeError("no such device")
