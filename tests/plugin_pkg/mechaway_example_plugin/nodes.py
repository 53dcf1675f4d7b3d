"""A third-party node type, registered exactly like a built-in one."""

from __future__ import annotations

from typing import Any

from mechaway.nodes.base import Message, Node, NodeParams, Result
from mechaway.nodes.registry import register_node


class ScaleParams(NodeParams):
    factor: float = 1.0
    offset: float = 0.0


@register_node("ScaleNode")
class ScaleNode(Node):
    """Linear scaling of a numeric payload: payload * factor + offset."""

    Params = ScaleParams

    def __init__(self, node_id: str, params: Any, ctx: Any) -> None:
        super().__init__(node_id, params, ctx)
        self._f = params.factor
        self._o = params.offset

    def process(self, msg: Message) -> Result:
        return {**msg, "payload": msg["payload"] * self._f + self._o}
