"""LogNode: debug output to the log and to the status API."""

from __future__ import annotations

import collections
import logging
from typing import Any, Literal

import orjson

from mechaway.nodes.base import Message, Node, NodeParams, Result, get_path, split_path
from mechaway.nodes.registry import register_node

_LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING}


class LogParams(NodeParams):
    level: Literal["debug", "info", "warning"] = "info"
    #: what to show: a dotted path into the message, or ``""`` for the whole message
    property: str = "payload"
    #: how many recent messages ``GET /api/v1/status`` shows
    keep: int = 20

    def __post_init__(self) -> None:
        if not 0 <= self.keep <= 1000:
            raise ValueError("keep must be within 0..1000")


@register_node("LogNode")
class LogNode(Node):
    """Log each message (or one property) and keep the last few for the status API."""

    Params = LogParams

    def __init__(self, node_id: str, params: Any, ctx: Any) -> None:
        super().__init__(node_id, params, ctx)
        self._keys = split_path(params.property)
        self._level = _LEVELS[params.level]
        self.recent: collections.deque[Any] = collections.deque(maxlen=params.keep)

    def process(self, msg: Message) -> Result:
        value = get_path(msg, self._keys) if self._keys else msg
        self.recent.append(value)
        logger = self.ctx.log
        if logger.isEnabledFor(self._level):
            text = orjson.dumps(value, default=repr).decode()
            logger.log(self._level, "%s", text[:2000])
        return msg

    def status(self) -> dict[str, Any] | None:
        return {"recent": list(self.recent)}
