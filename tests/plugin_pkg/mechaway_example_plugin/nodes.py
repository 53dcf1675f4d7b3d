"""A third-party node type, registered exactly like a built-in one, through the public face
(``from mechaway import ...``) only."""

from __future__ import annotations

from typing import Annotated

from msgspec import Meta

from mechaway import Message, Node, NodeContext, NodeParams, Result, register_node


class ScaleParams(NodeParams):
    factor: Annotated[float, Meta(description="the payload is multiplied by this")] = 1.0
    offset: Annotated[float, Meta(description="then this is added")] = 0.0


@register_node("ScaleNode")
class ScaleNode(Node[ScaleParams]):
    """Linear scaling of a numeric payload: payload * factor + offset."""

    def __init__(self, node_id: str, params: ScaleParams, ctx: NodeContext) -> None:
        super().__init__(node_id, params, ctx)
        self._f = params.factor
        self._o = params.offset

    def process(self, msg: Message) -> Result:
        return {**msg, "payload": msg["payload"] * self._f + self._o}
