"""What the editor asks of the API besides events: located validation and the palette.

``check_document`` runs the one validation path (``mechaway.flow.validate``) and turns
its issues into what an editor can place: the node, the param and, for a script, the
line. ``palette_info`` says how the palette shows a node type.
"""

from __future__ import annotations

import re
from typing import Any

from mechaway.errors import FlowError, Issue
from mechaway.flow.validate import validate
from mechaway.nodes.base import Node
from mechaway.nodes.registry import get_node_type

#: ``nodes[3] (hot).params.rules[0].op`` / ``nodes[3].id`` / ``edges[1] (a -> b).port``
_NODE_WHERE = re.compile(r"^nodes\[(?P<i>\d+)\](?: \((?P<id>[^)]*)\))?(?P<rest>.*)$", re.S)
_EDGE_WHERE = re.compile(r"^edges\[(?P<i>\d+)\] \((?P<src>.*) -> (?P<dst>.*)\)(?P<rest>.*)$", re.S)
_PARAM = re.compile(r"^\.params\.(?P<name>[A-Za-z_][A-Za-z0-9_]*)")
#: a check() message names its param first: ``script: hot: line 3: ...``
_PARAM_IN_MESSAGE = re.compile(r"^(?P<name>[A-Za-z_][A-Za-z0-9_]*): ")
#: a Lua compile error says ``line N``; WASM errors name no line
_LINE = re.compile(r"\bline (?P<line>\d+)\b")

GROUPS = ("sources", "logic", "storage", "sinks", "hardware")
#: node modules (``mechaway.nodes.<name>``) and type name prefixes of the hardware drivers
_HARDWARE_MODULES = frozenset({"serial", "gpio", "i2c", "modbus", "hardware"})
_HARDWARE_PREFIXES = ("Serial", "GPIO", "PWM", "I2C", "Modbus")
_KIND_GROUP = {"source": "sources", "pure": "logic", "sink": "sinks"}


def _node_ids(raw: Any) -> list[str | None]:
    """The ``id`` of each node in a raw document (``None`` where there is none)."""
    nodes = raw.get("nodes") if isinstance(raw, dict) else None
    if not isinstance(nodes, list):
        return []
    return [n.get("id") if isinstance(n, dict) and isinstance(n.get("id"), str) else None
            for n in nodes]


def located(issue: Issue, ids: list[str | None]) -> dict[str, Any]:
    """One issue as the editor reads it: ``where``, ``message`` and, where known, ``node``
    (a node id of the document), ``param`` (a key of its params), ``line`` (in a script)
    and ``edge`` (an index into ``edges``)."""
    out: dict[str, Any] = {"where": issue.where, "message": issue.message}
    known = {i for i in ids if i is not None}
    m = _NODE_WHERE.match(issue.where)
    if m:
        index = int(m.group("i"))
        nid = m.group("id") or (ids[index] if index < len(ids) else None)
        if nid is not None and nid in known:
            out["node"] = nid
        rest = m.group("rest")
        param = _PARAM.match(rest)
        if param:
            out["param"] = param.group("name")
        elif rest == ".params":
            named = _PARAM_IN_MESSAGE.match(issue.message)
            if named:
                out["param"] = named.group("name")
        if rest.startswith(".params"):
            line = _LINE.search(issue.message)
            if line:
                out["line"] = int(line.group("line"))
        return out
    m = _EDGE_WHERE.match(issue.where)
    if m:
        out["edge"] = int(m.group("i"))
        end = m.group("dst") if m.group("rest") == ".to" else m.group("src")
        if end in known:
            out["node"] = end
    return out


def _warnings(raw: dict[str, Any]) -> list[dict[str, Any]]:
    """What deploys but may not be meant: unwired inputs, disabled nodes or flow."""
    out: list[dict[str, Any]] = []
    nodes = [n for n in raw.get("nodes", []) if isinstance(n, dict)]
    off = {n.get("id") for n in nodes if n.get("disabled") is True}
    fed = {
        e.get("to")
        for e in raw.get("edges", [])
        if isinstance(e, dict) and e.get("from") not in off
    }
    for i, n in enumerate(nodes):
        nid = n.get("id")
        where = f"nodes[{i}] ({nid})"
        if nid in off:
            out.append({"where": where, "node": nid,
                        "message": "disabled: not started, its edges pass nothing"})
            continue
        cls = get_node_type(str(n.get("type")))
        if cls is not None and cls.kind != "source" and nid not in fed:
            out.append({"where": where, "node": nid,
                        "message": "nothing is wired into it: it never receives a message"})
    if raw.get("disabled") is True:
        out.append({"where": "disabled", "message": "the flow is disabled: deploying it stops it"})
    return out


def check_document(raw: Any) -> tuple[int, dict[str, Any]]:
    """Validate ``raw`` as a deploy would: ``(200, {ok, warnings})`` or
    ``(422, {ok: false, errors})``. Nothing is deployed or stored."""
    ids = _node_ids(raw)
    try:
        valid = validate(raw, source="request body")
    except FlowError as err:
        return 422, {"ok": False, "errors": [located(i, ids) for i in err.issues]}
    assert isinstance(raw, dict)  # validate accepts nothing else
    # the validator's own (a publish its own flow receives, ...) and the editor's
    found = [located(i, ids) for i in valid.warnings] + _warnings(raw)
    return 200, {"ok": True, "warnings": found}


def parse_errors(err: FlowError) -> tuple[int, dict[str, Any]]:
    """A body that is not JSON (or YAML) at all, as ``/validate`` answers it."""
    return 422, {"ok": False, "errors": [located(i, []) for i in err.issues]}


def node_group(cls: type[Node]) -> str:
    """The palette group: a ``group`` ClassVar if the type sets one, ``hardware`` for the
    serial/GPIO/I2C/Modbus nodes, ``storage`` for the store's, else by kind."""
    declared = getattr(cls, "group", None)
    if isinstance(declared, str) and declared in GROUPS:
        return declared
    module = cls.__module__.rsplit(".", 1)[-1]
    if module in _HARDWARE_MODULES or cls.type_name.startswith(_HARDWARE_PREFIXES):
        return "hardware"
    if module == "storage":
        return "storage"
    if cls.kind == "pure" and not [p for p in cls.ports if p != "error"]:
        return "sinks"  # a pure node with no output (MQTTOutNode publishes in process)
    return _KIND_GROUP.get(cls.kind, "logic")


def palette_info(cls: type[Node]) -> dict[str, Any]:
    """``x-mechaway`` of a node type's schema: kind, ports (``error`` last, always there),
    palette group, and whether the params name more ports (RouteNode rules, script ports)."""
    ports = [p for p in cls.ports if p != "error"]
    return {
        "kind": cls.kind,
        "ports": [*ports, "error"],
        "group": node_group(cls),
        "dynamic_ports": cls.output_ports.__func__ is not Node.output_ports.__func__,  # type: ignore[attr-defined]
    }
