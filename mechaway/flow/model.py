"""The flow document (the seed's format) as strict structs."""

from __future__ import annotations

from typing import Any

import msgspec


class NodeSpec(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """One node: ``id`` unique in the flow, ``type`` a registered node type name."""

    id: str
    type: str
    params: dict[str, Any] = msgspec.field(default_factory=dict)
    name: str = ""


class EdgeSpec(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """A wire from an output ``port`` of node ``from`` to node ``to``."""

    from_: str = msgspec.field(name="from")
    to: str
    port: str = "out"


class FlowDoc(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """A flow: a DAG of nodes and edges."""

    id: str
    name: str = ""
    nodes: list[NodeSpec]
    edges: list[EdgeSpec] = msgspec.field(default_factory=list)
    disabled: bool = False

    def to_builtins(self) -> dict[str, Any]:
        """Plain JSON-compatible form (what is stored and served)."""
        out: dict[str, Any] = msgspec.to_builtins(self)
        return out

    def node(self, node_id: str) -> NodeSpec | None:
        """The node with this id, if any."""
        for n in self.nodes:
            if n.id == node_id:
                return n
        return None
