"""LogNode: debug output to the log and to the status API."""

from __future__ import annotations

import collections
import logging
from collections.abc import Callable
from typing import Annotated, Any, ClassVar, Literal

import orjson
from msgspec import Meta

from mechaway.nodes.base import Message, Node, NodeParams, Result, get_path, split_path
from mechaway.nodes.context import NodeContext
from mechaway.nodes.registry import register_node

_LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING}

#: who watches LogNode output live (the editor's events socket): called with
#: ``(flow_id, node_id, value)``. Empty while no editor is open: one ``if`` per message.
TAPS: list[Callable[[str, str, Any], None]] = []


class LogParams(NodeParams):
    level: Annotated[
        Literal["debug", "info", "warning"], Meta(description="the log level of each line")
    ] = "info"
    property: Annotated[
        str,
        Meta(description='what to show: a dotted path into the message, or "" for all of it'),
    ] = "payload"
    keep: Annotated[
        int,
        Meta(ge=0, le=1000, description="how many recent messages GET /api/v1/status shows"),
    ] = 20


@register_node("LogNode")
class LogNode(Node[LogParams]):
    """Log each message (or one property) and keep the last few for the status API."""

    #: the editor's palette shows it with the outputs, as Node-RED does its debug node
    group: ClassVar[str] = "sinks"

    def __init__(self, node_id: str, params: LogParams, ctx: NodeContext) -> None:
        super().__init__(node_id, params, ctx)
        self._keys = split_path(params.property)
        self._level = _LEVELS[params.level]
        self.recent: collections.deque[Any] = collections.deque(maxlen=params.keep)

    def process(self, msg: Message) -> Result:
        value = get_path(msg, self._keys) if self._keys else msg
        self.recent.append(value)
        if TAPS:
            for tap in TAPS:
                tap(self.ctx.flow_id, self.id, value)
        logger = self.ctx.log
        if logger.isEnabledFor(self._level):
            text = orjson.dumps(value, default=repr).decode()
            logger.log(self._level, "%s", text[:2000])
        return msg

    def status(self) -> dict[str, Any] | None:
        return {"recent": list(self.recent)}
