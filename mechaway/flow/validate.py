"""Flow validation: schema, params per node type, graph shape; every issue located."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

import msgspec
import orjson

from mechaway.errors import FlowError, Issue, split_validation
from mechaway.flow.model import FlowDoc, NodeSpec
from mechaway.nodes.base import Node
from mechaway.nodes.registry import get_node_type, node_types

ID_RE = re.compile(r"^[A-Za-z0-9_.:-]{1,64}$")


@dataclass(frozen=True, slots=True)
class ValidNode:
    """A node whose type exists and whose params passed the type's schema."""

    spec: NodeSpec
    cls: type[Node]
    params: Any

    @property
    def id(self) -> str:
        return self.spec.id


@dataclass(frozen=True, slots=True)
class ValidFlow:
    """A flow that passed every check, with typed params, ready for the engine."""

    doc: FlowDoc
    #: the nodes that run (a ``disabled`` node is validated but not here)
    nodes: dict[str, ValidNode]
    #: (from, port) -> list of target node ids, in document order, between running nodes
    routes: dict[tuple[str, str], list[str]]
    #: what may be wrong but need not be (a template that may feed the flow itself)
    warnings: list[Issue] = field(default_factory=list)

    @property
    def id(self) -> str:
        return self.doc.id


def _msgspec_issue(prefix: str, err: Exception) -> Issue:
    """Turn msgspec's ``Expected `int`, got `str` - at `$.pin``` into a located issue."""
    path, text = split_validation(err)
    if prefix and path:
        path = path if path.startswith("[") else f".{path}"
    # a document-level path is ``edges[0]``: no leading dot without a prefix
    return Issue(f"{prefix}{path}", _humanize(text))


def _humanize(text: str) -> str:
    text = text.replace("Object missing required field", "missing required key")
    if text.startswith("Expected"):
        text = "expected" + text[len("Expected") :]
    if text.startswith("Invalid enum value"):
        text = "invalid value" + text[len("Invalid enum value") :]
    return text


def parse_doc(raw: Any) -> FlowDoc:
    """Check the document's shape (not yet its node types); raises a located ``FlowError``."""
    if not isinstance(raw, dict):
        raise FlowError([Issue("", f"a flow document must be an object, got {type(raw).__name__}")])
    try:
        return msgspec.convert(raw, FlowDoc)
    except msgspec.ValidationError as err:
        raise FlowError([_msgspec_issue("", err)]) from err


def validate(raw: Any, *, source: str = "") -> ValidFlow:
    """Validate a parsed document fully. Raises ``FlowError`` listing every issue found."""
    try:
        doc = raw if isinstance(raw, FlowDoc) else parse_doc(raw)
    except FlowError as err:
        err.source = source
        raise FlowError(err.issues, source) from None
    issues: list[Issue] = []
    if not ID_RE.match(doc.id):
        issues.append(Issue("id", f"{doc.id!r} is not a valid id (1-64 of A-Z a-z 0-9 _ . : -)"))

    if doc.ui is not msgspec.UNSET:
        issues.extend(_json_issues("ui", doc.ui))
    nodes: dict[str, ValidNode] = {}
    #: valid but ``disabled``: checked like the others, never started, edges pass nothing
    off: dict[str, ValidNode] = {}
    seen: set[str] = set()
    for i, spec in enumerate(doc.nodes):
        where = f"nodes[{i}] ({spec.id})"
        if not ID_RE.match(spec.id):
            issues.append(Issue(f"nodes[{i}].id", f"{spec.id!r} is not a valid node id"))
            continue
        if spec.id in seen:
            issues.append(Issue(f"nodes[{i}].id", f"duplicate node id {spec.id!r}"))
            continue
        seen.add(spec.id)
        if spec.ui is not msgspec.UNSET:
            issues.extend(_json_issues(f"{where}.ui", spec.ui))
        # params are stored, diffed and served as JSON (YAML can hold more than that)
        bad_json = _json_issues(f"{where}.params", spec.params)
        if bad_json:
            issues.extend(bad_json)
            continue
        cls = get_node_type(spec.type)
        if cls is None:
            known = ", ".join(sorted(node_types()))
            issues.append(
                Issue(f"{where}.type", f"unknown node type {spec.type!r} (known: {known})")
            )
            continue
        try:
            params = msgspec.convert(spec.params, cls.Params)
        except msgspec.ValidationError as err:
            issues.append(_msgspec_issue(f"{where}.params", err))
            continue
        try:
            problems = cls.check(params)
        except Exception as err:  # a type's own check must not take validation down
            problems = [f"check failed: {err}"]
        issues.extend(Issue(f"{where}.params", p) for p in problems)
        if not problems:
            (off if spec.is_disabled else nodes)[spec.id] = ValidNode(spec, cls, params)

    issues.extend(_claim_issues(doc, nodes))
    graph: dict[tuple[str, str], list[str]] = {}
    for i, edge in enumerate(doc.edges):
        where = f"edges[{i}] ({edge.from_} -> {edge.to})"
        bad = False
        for end, nid in (("from", edge.from_), ("to", edge.to)):
            if nid not in seen:
                issues.append(Issue(f"{where}.{end}", f"no node with id {nid!r}"))
                bad = True
        if bad:
            continue
        src = nodes.get(edge.from_) or off.get(edge.from_)
        dst = nodes.get(edge.to) or off.get(edge.to)
        if src is not None:
            ports = src.cls.output_ports(src.params)
            if edge.port != "error" and edge.port not in ports:
                have = ", ".join((*ports, "error"))
                issues.append(
                    Issue(
                        f"{where}.port",
                        f"node {edge.from_!r} has no port {edge.port!r} (has: {have})",
                    )
                )
        if dst is not None and dst.cls.kind == "source":
            issues.append(
                Issue(
                    f"{where}.to", f"{edge.to!r} is a source ({dst.spec.type}) and takes no input"
                )
            )
        targets = graph.setdefault((edge.from_, edge.port), [])
        if edge.to in targets:
            issues.append(Issue(where, "duplicate edge"))
        else:
            targets.append(edge.to)

    cycle = find_cycle(list(seen), graph)
    if cycle:
        issues.append(Issue("edges", "cycle: " + " -> ".join([*cycle, cycle[0]])))
    checked = {**nodes, **off}
    all_valid = bool(checked) and len(checked) == len(doc.nodes)
    if all_valid and not any(n.cls.self_starting(n.params) for n in checked.values()):
        issues.append(Issue("nodes", "the flow has no source node (nothing would ever run)"))
    if not doc.nodes:
        issues.append(Issue("nodes", "the flow has no nodes"))
    warnings = _flow_checks(doc, nodes, issues)
    if issues:
        raise FlowError(issues, source)
    # what runs: every edge between enabled nodes (a disabled node's edges pass nothing)
    routes: dict[tuple[str, str], list[str]] = {}
    for (src_id, port), dsts in graph.items():
        if src_id in nodes:
            live = [d for d in dsts if d in nodes]
            if live:
                routes[(src_id, port)] = live
    return ValidFlow(doc, nodes, routes, warnings)


def _flow_checks(doc: FlowDoc, nodes: dict[str, ValidNode], issues: list[Issue]) -> list[Issue]:
    """Checks across the running nodes: a node type's optional classmethod
    ``check_flow(nodes) -> [(level, node id, text)]`` (MQTT: a flow that feeds itself).
    Errors join ``issues``; the warnings are returned."""
    index = {spec.id: i for i, spec in enumerate(doc.nodes)}
    warnings: list[Issue] = []
    for cls in sorted({n.cls for n in nodes.values()}, key=lambda c: c.__name__):
        check_flow = getattr(cls, "check_flow", None)
        if check_flow is None:
            continue
        try:
            found = check_flow(nodes)
        except Exception as err:  # a type's own check must not take validation down
            found = [("error", "", f"{cls.__name__}.check_flow failed: {err}")]
        for level, nid, text in found:
            where = f"nodes[{index[nid]}] ({nid}).params" if nid in index else "nodes"
            (issues if level == "error" else warnings).append(Issue(where, text))
    return warnings


def _claim_issues(doc: FlowDoc, nodes: dict[str, ValidNode]) -> list[Issue]:
    """Two running nodes claiming one piece of hardware (``Node.claims``): name both."""
    issues: list[Issue] = []
    holder: dict[str, NodeSpec] = {}
    for i, spec in enumerate(doc.nodes):
        vn = nodes.get(spec.id)
        if vn is None or vn.spec is not spec:
            continue
        for what in vn.cls.claims(vn.params):
            first = holder.setdefault(what, spec)
            if first is not spec:
                issues.append(Issue(
                    f"nodes[{i}] ({spec.id}).params",
                    f"{what} is claimed by both {first.id!r} ({first.type}) and "
                    f"{spec.id!r} ({spec.type}): only one node may hold it",
                ))  # fmt: skip
    return issues


def _json_issues(where: str, value: Any) -> list[Issue]:
    """``value`` must come back from JSON unchanged (it is stored, diffed and served)."""
    try:
        stored = orjson.loads(orjson.dumps(value))
    except TypeError as err:  # orjson.JSONEncodeError: big int, non-str key, cycle, set
        return [Issue(where, f"not JSON-compatible: {err}")]
    if stored != value:  # NaN and +-Infinity would come back from the store as null
        return [Issue(where, "not JSON-compatible: NaN or Infinity")]
    return []


def find_cycle(ids: list[str], routes: dict[tuple[str, str], list[str]]) -> list[str]:
    """Return the nodes on one cycle (in order), or ``[]`` if the graph is acyclic."""
    succ: dict[str, list[str]] = {i: [] for i in ids}
    for (src, _port), dsts in routes.items():
        succ.setdefault(src, []).extend(dsts)
    white, grey, black = 0, 1, 2
    color = dict.fromkeys(succ, white)
    for root in sorted(succ):
        if color[root] != white:
            continue
        path: list[str] = [root]
        stack = [iter(succ[root])]
        color[root] = grey
        while stack:
            nxt = next(stack[-1], None)
            if nxt is None:
                stack.pop()
                color[path.pop()] = black
                continue
            c = color.get(nxt, white)
            if c == grey:
                return path[path.index(nxt) :]
            if c == white:
                color[nxt] = grey
                path.append(nxt)
                stack.append(iter(succ.get(nxt, [])))
    return []
