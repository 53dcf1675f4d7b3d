"""What changed between the running revision of a flow and a new one."""

from __future__ import annotations

from dataclasses import dataclass

import orjson

from mechaway.flow.model import FlowDoc, NodeSpec


def node_key(spec: NodeSpec) -> bytes:
    """Identity of a node's behaviour: same type and same params = same node.

    ``ui`` (where the editor drew it) is not part of it: a node that only moved keeps
    running. Disabling or enabling a node changes it (it stops or starts).
    """
    key: list[object] = [spec.type, spec.params]
    if spec.is_disabled:
        key.append("disabled")
    return orjson.dumps(key, option=orjson.OPT_SORT_KEYS)


@dataclass(frozen=True, slots=True)
class FlowDiff:
    """Node ids by fate. ``kept`` nodes keep their instance (and state) across the deploy."""

    added: tuple[str, ...]
    changed: tuple[str, ...]
    removed: tuple[str, ...]
    kept: tuple[str, ...]
    edges_changed: bool

    @property
    def noop(self) -> bool:
        return not (self.added or self.changed or self.removed or self.edges_changed)


def diff(old: FlowDoc | None, new: FlowDoc) -> FlowDiff:
    """Compare two revisions of one flow."""
    old_nodes = {n.id: n for n in old.nodes} if old else {}
    new_nodes = {n.id: n for n in new.nodes}
    added = tuple(i for i in new_nodes if i not in old_nodes)
    removed = tuple(i for i in old_nodes if i not in new_nodes)
    changed: list[str] = []
    kept: list[str] = []
    for i, spec in new_nodes.items():
        if i in old_nodes:
            (kept if node_key(old_nodes[i]) == node_key(spec) else changed).append(i)

    def edge_set(doc: FlowDoc | None) -> set[tuple[str, str, str]]:
        return {(e.from_, e.port, e.to) for e in doc.edges} if doc else set()

    return FlowDiff(added, tuple(changed), removed, tuple(kept), edge_set(old) != edge_set(new))
