"""The flow document (the seed's format) as strict structs."""

from __future__ import annotations

from typing import Any

import msgspec


class NodeSpec(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """One node: ``id`` unique in the flow, ``type`` a registered node type name.

    ``ui`` (any JSON object, e.g. the editor's ``{"x": 120, "y": 40}``) is kept through
    revisions and ignored by the runtime: a node that only moved is not restarted.
    ``disabled: true`` keeps a node in the document (validated) without starting it;
    its edges pass nothing. Both are left out of the stored form when not set.
    """

    id: str
    type: str
    params: dict[str, Any] = msgspec.field(default_factory=dict)
    name: str = ""
    ui: dict[str, Any] | msgspec.UnsetType = msgspec.UNSET
    disabled: bool | msgspec.UnsetType = msgspec.UNSET

    @property
    def is_disabled(self) -> bool:
        return self.disabled is True


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
    #: the editor's flow-level data (viewport...), kept and ignored like a node's ``ui``
    ui: dict[str, Any] | msgspec.UnsetType = msgspec.UNSET

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
