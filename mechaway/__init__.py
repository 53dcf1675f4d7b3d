"""mechaway: an edge/IoT runtime for fast telemetry microflows on single-board computers.

The names here are the public face for plugin authors; everything else is inside::

    from typing import Annotated

    from msgspec import Meta

    from mechaway import Message, Node, NodeParams, Result, register_node

    class ScaleParams(NodeParams):
        factor: Annotated[float, Meta(description="multiply the payload by this")] = 1.0

    @register_node("ScaleNode")
    class ScaleNode(Node[ScaleParams]):
        \"\"\"Scale a numeric payload.\"\"\"

        def process(self, msg: Message) -> Result:
            return {**msg, "payload": msg["payload"] * self.params.factor}

A package makes its node types known with an entry point in the group ``mechaway.nodes``
naming the module that registers them. The names are imported on first use, so
``import mechaway`` (and so every ``import mechaway.x``) stays cheap.
"""

from __future__ import annotations

# ``typing`` is not imported: ``import mechaway`` (so every ``import mechaway.x``) stays as
# cheap as the interpreter's own start; type checkers treat the name as true all the same.
TYPE_CHECKING = False

__version__ = "0.1.0"

# name -> the module that defines it (imported when the name is first used)
_EXPORTS: dict[str, str] = {
    # the node contract
    "Node": "mechaway.nodes.base",
    "SourceNode": "mechaway.nodes.base",
    "SinkNode": "mechaway.nodes.base",
    "NodeParams": "mechaway.nodes.base",
    "NoParams": "mechaway.nodes.base",
    "SinkParams": "mechaway.nodes.base",
    "Message": "mechaway.nodes.base",
    "Result": "mechaway.nodes.base",
    "Emit": "mechaway.nodes.base",
    "register_node": "mechaway.nodes.registry",
    "NodeContext": "mechaway.nodes.context",
    "Services": "mechaway.nodes.context",
    # message helpers
    "get_path": "mechaway.nodes.base",
    "split_path": "mechaway.nodes.base",
    "now": "mechaway.nodes.base",
    # errors a plugin raises or meets
    "MechawayError": "mechaway.errors",
    "ConfigError": "mechaway.errors",
    "FlowError": "mechaway.errors",
    "NodeError": "mechaway.errors",
    "NotConnected": "mechaway.errors",
    "DuplicateNodeType": "mechaway.nodes.registry",
}

__all__ = [
    "ConfigError",
    "DuplicateNodeType",
    "Emit",
    "FlowError",
    "MechawayError",
    "Message",
    "NoParams",
    "Node",
    "NodeContext",
    "NodeError",
    "NodeParams",
    "NotConnected",
    "Result",
    "Services",
    "SinkNode",
    "SinkParams",
    "SourceNode",
    "__version__",
    "get_path",
    "now",
    "register_node",
    "split_path",
]

if TYPE_CHECKING:
    from typing import Any

    from mechaway.errors import ConfigError, FlowError, MechawayError, NodeError, NotConnected
    from mechaway.nodes.base import (
        Emit,
        Message,
        Node,
        NodeParams,
        NoParams,
        Result,
        SinkNode,
        SinkParams,
        SourceNode,
        get_path,
        now,
        split_path,
    )
    from mechaway.nodes.context import NodeContext, Services
    from mechaway.nodes.registry import DuplicateNodeType, register_node


else:  # hidden from type checkers, so that they check every name against the imports above

    def __getattr__(name: str) -> Any:
        module = _EXPORTS.get(name)
        if module is None:
            raise AttributeError(f"module 'mechaway' has no attribute {name!r}")
        import importlib

        value = getattr(importlib.import_module(module), name)
        globals()[name] = value  # once: later uses are plain attribute reads
        return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
