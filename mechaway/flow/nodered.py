"""Node-RED ``flows.json`` -> mechaway flow documents, with a report of what did not map.

Each tab becomes a flow; ``wires`` (one list of target ids per output) become edges with
ports; link nodes and junctions are followed through to direct edges. The node types
people wire most map to ours (the table is in docs/editor-api.md); what cannot be mapped
(JSONata and context expressions, subflows, cycles, unknown types, wires across tabs) is
listed in the report, never dropped silently. Config nodes (mqtt-broker, serial-port,
modbus-client) become the ``[KIND.NAME]`` sections of mechaway's config, given as TOML.

Nothing is deployed: the result is for a person (or the editor) to review.

Over 800 lines on purpose: half of it is one small mapping function per Node-RED node
type, read side by side with Node-RED's field names; the importer that walks tabs, wires
and links is the other half. Splitting them would only move the table away from its one
user.
"""

from __future__ import annotations

import math
import re
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

from mechaway import files
from mechaway.errors import FlowError
from mechaway.flow.validate import ID_RE, find_cycle, validate

#: node types that only carry wires (followed through to direct edges)
PASS_THROUGH = frozenset({"junction", "link in", "link out"})
CONFIG_TYPES = frozenset({"mqtt-broker", "serial-port", "modbus-client"})
#: Node-RED's physical header pin -> BCM GPIO number (node-red-node-pi-gpio's table)
PIN_TO_BCM = {
    3: 2, 5: 3, 7: 4, 8: 14, 10: 15, 11: 17, 12: 18, 13: 27, 15: 22, 16: 23, 18: 24,
    19: 10, 21: 9, 22: 25, 23: 11, 24: 8, 26: 7, 29: 5, 31: 6, 32: 12, 33: 13, 35: 19,
    36: 16, 37: 26, 38: 20, 40: 21,
}  # fmt: skip
_UNITS_S = {
    "ms": 0.001, "milliseconds": 0.001, "millisecond": 0.001,
    "s": 1.0, "second": 1.0, "seconds": 1.0,
    "m": 60.0, "min": 60.0, "minute": 60.0, "minutes": 60.0,
    "h": 3600.0, "hr": 3600.0, "hour": 3600.0, "hours": 3600.0,
    "d": 86400.0, "day": 86400.0, "days": 86400.0,
}  # fmt: skip
_SWITCH_OPS = {
    "eq": "eq", "neq": "neq", "lt": "lt", "lte": "lte", "gt": "gt", "gte": "gte",
    "btwn": "between", "cont": "contains", "regex": "regex", "true": "true",
    "false": "false", "null": "null", "nnull": "nnull", "else": "else",
}  # fmt: skip
#: value types Node-RED evaluates at run time, which a static import cannot
_DYNAMIC = {
    "jsonata": "a JSONata expression",
    "flow": "a flow context value",
    "global": "a global context value",
    "env": "an environment variable",
    "msg": "another message property",
    "prev": "the previous value",
    "bin": "a buffer",
    "date": "the current time",
}


class Unmappable(Exception):
    """This node (or one of its settings) has no mechaway equivalent; the message says why."""


@dataclass(frozen=True, slots=True)
class Problem:
    """One report line: the Node-RED node (id and type) and what did not carry over."""

    node: str
    type: str
    problem: str
    flow: str | None = None

    def as_dict(self) -> dict[str, Any]:
        out = {"node": self.node, "type": self.type, "problem": self.problem}
        if self.flow is not None:
            out["flow"] = self.flow
        return out


@dataclass
class ImportResult:
    """Flow documents (one per tab), the report, and the config sections as TOML."""

    flows: list[dict[str, Any]] = field(default_factory=list)
    report: list[Problem] = field(default_factory=list)
    config: str = ""

    def as_dict(self) -> dict[str, Any]:
        return {
            "flows": self.flows,
            "report": [p.as_dict() for p in self.report],
            "config": self.config,
        }


@dataclass
class _Mapped:
    """A Node-RED node as mechaway nodes: ``entry`` takes its input (None: it takes none),
    ``exits`` maps a Node-RED output index to (node id, port)."""

    nodes: list[dict[str, Any]]
    entry: str | None
    exits: dict[int, tuple[str, str]]
    notes: list[str] = field(default_factory=list)


# -- small converters -------------------------------------------------------------------------
def _num(value: Any, what: str, default: float | None = None) -> float:
    """A Node-RED number field (often a string); ``Unmappable`` when it is not one."""
    if value in (None, "") and default is not None:
        return float(default)
    if isinstance(value, bool):
        raise Unmappable(f"{what}: expected a number, got {value!r}")
    try:
        n = float(value)
    except (TypeError, ValueError):
        raise Unmappable(f"{what}: expected a number, got {value!r:.40}") from None
    if not math.isfinite(n):
        raise Unmappable(f"{what}: expected a finite number, got {value!r:.40}")
    return n


def _int_or_float(n: float) -> int | float:
    return int(n) if n.is_integer() and abs(n) < 2**53 else n


def _typed(value: Any, vtype: Any, what: str) -> Any:
    """A value Node-RED stores as text with a type (``v``/``vt``) as a JSON value."""
    vt = vtype if isinstance(vtype, str) and vtype else "str"
    if vt in _DYNAMIC:
        raise Unmappable(f"{what} is {_DYNAMIC[vt]} ({vt}), evaluated at run time")
    if vt == "num":
        return _int_or_float(_num(value, what))
    if vt == "bool":
        return value is True or value == "true"
    if vt == "json":
        try:
            return orjson.loads(value if isinstance(value, str | bytes) else orjson.dumps(value))
        except orjson.JSONDecodeError as err:
            raise Unmappable(f"{what}: invalid JSON ({err.msg})") from None
    if vt in ("str", "val", "re"):
        return "" if value is None else value if isinstance(value, str) else str(value)
    if vt in ("null", "nul"):
        return None
    raise Unmappable(f"{what} has the unknown value type {vt!r:.30}")


def _msg_path(prop: Any, ptype: Any, what: str) -> str:
    """A ``msg.`` property path (``payload.temp``); context and JSONata are unmappable."""
    pt = ptype if isinstance(ptype, str) and ptype else "msg"
    if pt != "msg":
        raise Unmappable(f"{what} is {_DYNAMIC.get(pt, pt)} ({pt}), not a message property")
    if not isinstance(prop, str) or not prop.strip():
        return "payload"
    return prop.strip().removeprefix("msg.")


def _seconds(value: Any, units: Any, what: str, default: float) -> float:
    factor = _UNITS_S.get(units if isinstance(units, str) else "")
    if factor is None:
        raise Unmappable(f"{what}: unknown time unit {units!r:.20}")
    return _num(value, what, default) * factor


def _true(value: Any) -> bool:
    return value is True or value == "true"


def _slug(text: str, fallback: str) -> str:
    s = re.sub(r"[^a-z0-9_]+", "_", text.lower()).strip("_")[:48]
    return s or fallback


def _node_id(raw_id: str) -> str:
    """A Node-RED id as a mechaway node id (they are usually valid as they are)."""
    if ID_RE.match(raw_id):
        return raw_id
    return re.sub(r"[^A-Za-z0-9_.:-]", "_", raw_id)[:64] or "node"


def _toml_value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int | float):
        return repr(v)
    return orjson.dumps(str(v)).decode()  # a JSON string is a TOML basic string


# -- the importer -----------------------------------------------------------------------------
class _Importer:
    def __init__(self, raw: Any) -> None:
        self.result = ImportResult()
        self.by_id: dict[str, dict[str, Any]] = {}
        self.entries = self._entries(raw)
        #: config node id -> the connection name its section gets
        self.connections: dict[str, str] = {}
        self.sections: list[str] = []

    def report(self, n: dict[str, Any] | None, problem: str, flow: str | None = None) -> None:
        nid = str(n.get("id", "")) if n else ""
        ntype = str(n.get("type", "")) if n else ""
        self.result.report.append(Problem(nid, ntype, problem, flow))

    def _entries(self, raw: Any) -> list[dict[str, Any]]:
        if isinstance(raw, dict) and isinstance(raw.get("flows"), list):
            raw = raw["flows"]  # the admin API's v2 format: {"rev": ..., "flows": [...]}
        if not isinstance(raw, list):
            self.report(None, "not a Node-RED flows.json: expected a list of nodes")
            return []
        out = []
        for i, n in enumerate(raw):
            if not (isinstance(n, dict) and isinstance(n.get("id"), str) and n["id"]
                    and isinstance(n.get("type"), str)):
                self.result.report.append(
                    Problem(f"[{i}]", "", "not a node object (needs string id and type)")
                )
                continue
            if n["id"] in self.by_id:
                self.report(n, "duplicate id: this second node is not imported")
                continue
            self.by_id[n["id"]] = n
            out.append(n)
        return out

    def run(self) -> ImportResult:
        tabs = [n for n in self.entries if n["type"] == "tab"]
        subflows = {n["id"] for n in self.entries if n["type"] == "subflow"}
        tab_ids = {t["id"] for t in tabs}
        for n in self.entries:
            if n["type"] in CONFIG_TYPES:
                self._config(n)
        members: dict[str, list[dict[str, Any]]] = {t: [] for t in tab_ids}
        for n in self.entries:
            t, z = n["type"], n.get("z")
            z = z if isinstance(z, str) else None if z is None else repr(z)[:40]
            if t == "tab" or t in CONFIG_TYPES:
                continue
            if t == "subflow":
                self.report(n, "subflows are not supported: inline its nodes into a tab")
            elif z in subflows:
                self.report(n, f"inside subflow {z}: not imported (subflows are not supported)")
            elif z is not None and z in tab_ids:
                members[z].append(n)
            elif t == "group":
                self.report(n, "a group outside any tab: not imported")
            elif z is None and "wires" not in n:
                self.report(n, f"config node of type {t!r}: not used by mechaway")
            else:
                self.report(n, f"belongs to no tab (z={z!r:.40}): not imported")
        used: set[str] = set()
        for tab in tabs:
            fid = self._unique(_slug(str(tab.get("label") or ""), "") or _node_id(tab["id"]),
                               used)
            self.result.flows.append(self._flow(tab, fid, members[tab["id"]]))
        self.result.config = "\n".join(self.sections)
        return self.result

    @staticmethod
    def _unique(name: str, used: set[str]) -> str:
        base, k = name[:60], 2
        while name in used:
            name = f"{base}_{k}"
            k += 1
        used.add(name)
        return name

    # -- config nodes ---------------------------------------------------------------------
    def _config(self, n: dict[str, Any]) -> None:
        t = n["type"]
        kind = {"mqtt-broker": "mqtt", "serial-port": "serial", "modbus-client": "modbus"}[t]
        host = n.get("broker") or n.get("serialport") or n.get("tcpHost") or n.get("serialPort")
        base = _slug(str(n.get("name") or host or ""), kind)
        taken = {v for k, v in self.connections.items() if self.by_id[k]["type"] == t}
        name = self._unique(base, taken)
        self.connections[n["id"]] = name
        keys: dict[str, Any] = {}
        notes: list[str] = []
        try:
            if kind == "mqtt":
                keys["host"] = str(n.get("broker") or "127.0.0.1")
                keys["port"] = int(_num(n.get("port"), "port", 1883))
                if n.get("clientid"):
                    keys["client_id"] = str(n["clientid"])
                keys["tls"] = _true(n.get("usetls"))
                keys["keepalive"] = int(_num(n.get("keepalive"), "keepalive", 60))
                keys["clean_session"] = n.get("cleansession") is not False and n.get(
                    "cleansession"
                ) != "false"
                keys["protocol"] = "5" if str(n.get("protocolVersion")) == "5" else "3.1.1"
                notes.append("credentials are not in flows.json: add username/password")
            elif kind == "serial":
                keys["port"] = str(n.get("serialport") or "/dev/ttyUSB0")
                keys["baudrate"] = int(_num(n.get("serialbaud"), "serialbaud", 57600))
                keys["framing"] = "line"
                keys["bytesize"] = int(_num(n.get("databits"), "databits", 8))
                keys["parity"] = str(n.get("parity") or "none")
                keys["stopbits"] = _int_or_float(_num(n.get("stopbits"), "stopbits", 1))
                newline = n.get("newline")
                if n.get("out", "char") != "char" or newline not in ("\\n", "\n", None, ""):
                    notes.append(
                        f"Node-RED splits input by {n.get('out', 'char')!r} {newline!r:.20};"
                        " mechaway's line framing splits at newlines"
                    )
            else:
                if n.get("clienttype", "tcp") == "tcp":
                    keys["host"] = str(n.get("tcpHost") or "127.0.0.1")
                    keys["port"] = int(_num(n.get("tcpPort"), "tcpPort", 502))
                    if n.get("tcpType", "DEFAULT") != "DEFAULT":
                        notes.append(f"tcpType {n.get('tcpType')!r:.30} is not supported")
                else:
                    keys["serial_port"] = str(n.get("serialPort") or "/dev/ttyUSB0")
                    keys["baudrate"] = int(_num(n.get("serialBaudrate"), "serialBaudrate", 9600))
                    keys["parity"] = str(n.get("serialParity") or "none")
                    keys["stopbits"] = _int_or_float(
                        _num(n.get("serialStopbits"), "serialStopbits", 1)
                    )
                    keys["bytesize"] = int(_num(n.get("serialDatabits"), "serialDatabits", 8))
                    if str(n.get("serialType", "RTU")).upper() == "ASCII":
                        notes.append("Modbus ASCII is not supported (RTU is)")
                keys["timeout"] = _num(n.get("clientTimeout"), "clientTimeout", 1000) / 1000
        except Unmappable as err:
            notes.append(f"{err}; defaults used")
        lines = [f"[{kind}.{name}]"] + [f"{k} = {_toml_value(v)}" for k, v in keys.items()]
        section = "\n".join(lines) + "\n"
        self.sections.append(section)
        extra = f" ({'; '.join(notes)})" if notes else ""
        self.report(n, f"config node: add this section to mechaway's config{extra}:\n{section}")

    def _connection(self, n: dict[str, Any], key: str, kind: str) -> str:
        ref = n.get(key)
        if isinstance(ref, str) and ref in self.connections:
            return self.connections[ref]
        raise Unmappable(f"{key}: no {kind} config node {ref!r:.40} in this flows.json")

    # -- one tab ----------------------------------------------------------------------------
    def _flow(self, tab: dict[str, Any], fid: str, members: list[dict[str, Any]]) -> dict[str, Any]:
        mapped: dict[str, _Mapped] = {}
        merged: list[str] = []
        ids: set[str] = set()
        for n in members:
            t = n["type"]
            if t == "link call" or (t == "link out" and n.get("mode") == "return"):
                self.report(n, "link call/return is not supported: not imported", fid)
                continue
            if t in PASS_THROUGH:
                merged.append(n["id"])
                continue
            if t.startswith("subflow:"):
                self.report(n, "a subflow instance: not imported, its wires dropped", fid)
                continue
            if t in ("comment", "group"):
                self.report(n, f"{t}: visual only, not imported", fid)
                continue
            mapper = MAPPERS.get(t)
            if mapper is None:
                self.report(n, f"unknown node type {t!r:.60}: not imported, its wires dropped",
                            fid)
                continue
            nid = self._unique(_node_id(n["id"]), ids)
            try:
                m = mapper(self, n, nid)
            except Unmappable as err:
                self.report(n, f"not imported: {err}; its wires dropped", fid)
                continue
            for note in m.notes:
                self.report(n, note, fid)
            ui: dict[str, Any] = {"nodered": {"id": n["id"], "type": t}}
            for axis in ("x", "y"):
                if isinstance(n.get(axis), int | float) and not isinstance(n.get(axis), bool):
                    ui[axis] = n[axis]
            for k, spec in enumerate(m.nodes):
                spec.setdefault("name", str(n.get("name") or ""))
                if k == 0:
                    spec["ui"] = {**ui, **spec.get("ui", {})}
                if n.get("d") is True:
                    spec["disabled"] = True
            mapped[n["id"]] = m
        edges = self._edges(tab, fid, members, mapped)
        doc: dict[str, Any] = {
            "id": fid,
            "name": str(tab.get("label") or fid),
            "nodes": [spec for m in mapped.values() for spec in m.nodes],
            "edges": edges,
            "ui": {"nodered": {"tab": tab["id"], "merged": merged}},
        }
        if _true(tab.get("disabled")):
            doc["disabled"] = True
        self._check(doc)
        return doc

    def _follow(self, start: str, fid_tab: str, seen: set[str]) -> list[tuple[str, str]]:
        """Real targets of a wire to ``start``: ``(node id, problem)``; link nodes and
        junctions are followed. A problem (non-empty) means the wire cannot be kept."""
        if start in seen:
            return []
        seen.add(start)
        n = self.by_id.get(start)
        if n is None:
            return [(start, f"wired to {start!r:.40}, which is not in flows.json")]
        t = n["type"]
        z = n.get("z")
        if z != fid_tab:
            where = self.by_id.get(z) if isinstance(z, str) else None
            if where is not None and where.get("type") == "tab":
                return [(start, f"a wire (through links) to {start} on another tab: flows "
                                "cannot wire into each other (use MQTT between them)")]
            return [(start, f"wired to {start!r:.40}, which is on no tab of this flow")]
        nxt: list[str] = []
        if t in ("junction", "link in"):
            wires = n.get("wires")
            first = wires[0] if isinstance(wires, list) and wires else []
            nxt = [w for w in first if isinstance(w, str)] if isinstance(first, list) else []
        elif t == "link out":
            if n.get("mode") == "return":
                return [(start, "link out in return mode is not supported")]
            own = n.get("links")
            links = [x for x in own if isinstance(x, str)] if isinstance(own, list) else []
            links += [m["id"] for m in self.entries if m["type"] == "link in"
                      and isinstance(m.get("links"), list) and start in m["links"]
                      and m["id"] not in links]
            nxt = links
        else:
            return [(start, "")]
        out: list[tuple[str, str]] = []
        for w in nxt:
            if isinstance(w, str):
                out.extend(self._follow(w, fid_tab, seen))
        return out

    def _edges(
        self,
        tab: dict[str, Any],
        fid: str,
        members: list[dict[str, Any]],
        mapped: dict[str, _Mapped],
    ) -> list[dict[str, Any]]:
        edges: list[dict[str, Any]] = []
        have: set[tuple[str, str, str]] = set()
        for n in members:
            m = mapped.get(n["id"])
            if m is None:
                continue
            wires = n.get("wires")
            if not isinstance(wires, list):
                continue
            for index, targets in enumerate(wires):
                if not isinstance(targets, list) or not targets:
                    continue
                exit_ = m.exits.get(index)
                if exit_ is None:
                    self.report(n, f"output {index + 1} has no mechaway equivalent: its"
                                   " wires are dropped", fid)
                    continue
                for target in targets:
                    if not isinstance(target, str):
                        continue
                    for real, problem in self._follow(target, tab["id"], set()):
                        if problem:
                            self.report(n, f"output {index + 1}: {problem}; wire dropped", fid)
                            continue
                        dst = mapped.get(real)
                        if dst is None:
                            continue  # the target itself is in the report
                        if dst.entry is None:
                            self.report(n, f"output {index + 1}: {real} takes no input in"
                                           " mechaway; wire dropped", fid)
                            continue
                        key = (exit_[0], exit_[1], dst.entry)
                        if key not in have:
                            have.add(key)
                            edges.append({"from": key[0], "to": key[2], "port": key[1]})
        for m in mapped.values():  # wires inside one Node-RED node's mapping
            for spec in m.nodes:
                for e in spec.pop("_edges", []):
                    edges.append(e)
        return self._break_cycles(fid, edges, mapped)

    def _break_cycles(
        self, fid: str, edges: list[dict[str, Any]], mapped: dict[str, _Mapped]
    ) -> list[dict[str, Any]]:
        """A flow is a DAG: drop the wire that closes each cycle (reported)."""
        owner = {spec["id"]: nr for nr, m in mapped.items() for spec in m.nodes}
        while True:
            routes: dict[tuple[str, str], list[str]] = {}
            for e in edges:
                routes.setdefault((e["from"], e["port"]), []).append(e["to"])
            cycle = find_cycle(sorted(owner), routes)
            if not cycle:
                return edges
            a, b = cycle[-1], cycle[0]
            victim = next(e for e in edges if e["from"] == a and e["to"] == b)
            edges.remove(victim)
            path = " -> ".join([*cycle, cycle[0]])
            self.report(self.by_id.get(owner.get(a, "")) or {"id": a, "type": ""},
                        f"cycle {path}: mechaway flows are acyclic, the wire {a} -> {b}"
                        " is dropped", fid)

    def _check(self, doc: dict[str, Any]) -> None:
        """Report what keeps the imported flow from validating (it is returned anyway)."""
        try:
            validate(doc, source=doc["id"])
        except FlowError as err:
            for issue in err.issues:
                self.result.report.append(
                    Problem(doc["id"], "flow", f"does not validate yet: {issue}", doc["id"])
                )


# -- mappers: one per Node-RED type -----------------------------------------------------------
Mapper = Callable[[_Importer, dict[str, Any], str], _Mapped]


def _one(nid: str, ntype: str, params: dict[str, Any], *, source: bool = False,
         ports: int = 1, notes: list[str] | None = None) -> _Mapped:
    exits = {0: (nid, "out")} if ports else {}
    return _Mapped([{"id": nid, "type": ntype, "params": params}], None if source else nid,
                   exits, notes or [])


def _inject(imp: _Importer, n: dict[str, Any], nid: str) -> _Mapped:
    params: dict[str, Any] = {}
    notes: list[str] = []
    repeat = _num(n.get("repeat"), "repeat", 0.0)
    cron = n.get("crontab")
    if repeat > 0:
        params["interval"] = repeat
    elif isinstance(cron, str) and cron.strip():
        params["cron"] = cron.strip()
    if _true(n.get("once")):
        params["once"] = True
        params["once_delay"] = _num(n.get("onceDelay"), "onceDelay", 0.1)
    disabled = False
    if not params:
        params["once"] = True
        disabled = True
        notes.append("fires only on its button in Node-RED: imported disabled, as once at start")
    raw_props = n.get("props")
    props: list[Any] = raw_props if isinstance(raw_props, list) else [{"p": "payload"}]
    for prop in props:
        p = prop.get("p") if isinstance(prop, dict) else None
        if p == "payload":
            ptype = n.get("payloadType", "date")
            if ptype == "date":
                notes.append("payload: the time, sent in epoch seconds (Node-RED: milliseconds)")
            else:
                try:
                    params["payload"] = _typed(n.get("payload"), ptype, "payload")
                except Unmappable as err:
                    notes.append(f"{err}: the time is sent instead")
        elif p == "topic":
            params["topic"] = str(n.get("topic") or "")
        elif p is not None:
            notes.append(f"property msg.{p}: InjectNode sets only payload and topic; dropped")
    m = _one(nid, "InjectNode", params, source=True, notes=notes)
    if disabled:
        m.nodes[0]["disabled"] = True
    return m


def _debug(imp: _Importer, n: dict[str, Any], nid: str) -> _Mapped:
    complete = n.get("complete", "payload")
    if n.get("targetType") == "jsonata":
        raise Unmappable("shows a JSONata expression")
    prop = "" if complete in ("true", True) else (
        "payload" if complete in ("false", False, "", None) else str(complete).removeprefix("msg.")
    )
    return _one(nid, "LogNode", {"property": prop}, ports=0)


def _switch(imp: _Importer, n: dict[str, Any], nid: str) -> _Mapped:
    prop = _msg_path(n.get("property"), n.get("propertyType"), "property")
    rules: list[dict[str, Any]] = []
    exits: dict[int, tuple[str, str]] = {}
    notes: list[str] = []
    given = n.get("rules")
    raw_rules: list[Any] = given if isinstance(given, list) else []
    for i, r in enumerate(raw_rules):
        port = f"rule{i + 1}"
        try:
            if not isinstance(r, dict):
                raise Unmappable("not an object")
            t = r.get("t")
            rule: dict[str, Any] = {"port": port, "property": prop}
            if t == "hask":
                key = _typed(r.get("v"), r.get("vt"), "key")
                rule.update(op="exists", property=f"{prop}.{key}")
            elif t in _SWITCH_OPS:
                rule["op"] = _SWITCH_OPS[t]
                if t in ("eq", "neq", "lt", "lte", "gt", "gte", "cont", "regex"):
                    rule["value"] = _typed(r.get("v"), r.get("vt"), "value")
                if t == "regex" and _true(r.get("case")):
                    rule["value"] = f"(?i){rule['value']}"
                if t == "btwn":
                    rule["value"] = _typed(r.get("v"), r.get("vt"), "value")
                    rule["value2"] = _typed(r.get("v2"), r.get("v2t"), "value2")
            elif t == "jsonata_exp":
                raise Unmappable("a JSONata expression")
            else:
                raise Unmappable(f"the operator {t!r:.20} has no RouteNode equivalent")
        except Unmappable as err:
            notes.append(f"rule {i + 1}: {err}; the rule and its output are dropped")
            continue
        rules.append(rule)
        exits[i] = (nid, port)
    if not rules:
        raise Unmappable("no rule could be mapped")
    mode = "all" if _true(n.get("checkall", "true")) else "first"
    return _Mapped([{"id": nid, "type": "RouteNode", "params": {"rules": rules, "mode": mode}}],
                   nid, exits, notes)


def _change(imp: _Importer, n: dict[str, Any], nid: str) -> _Mapped:
    rules: list[dict[str, Any]] = []
    notes: list[str] = []
    raw_rules = n.get("rules")
    if not isinstance(raw_rules, list):
        raise Unmappable("no rules (the pre-0.16 change format is not supported)")
    for i, r in enumerate(raw_rules):
        try:
            if not isinstance(r, dict):
                raise Unmappable("not an object")
            t = r.get("t")
            path = _msg_path(r.get("p"), r.get("pt"), "property")
            if t == "set":
                if r.get("tot") == "msg":
                    rules.append({"op": "set", "path": path,
                                  "from": _msg_path(r.get("to"), "msg", "to")})
                else:
                    rules.append({"op": "set", "path": path,
                                  "value": _typed(r.get("to"), r.get("tot"), "to")})
            elif t == "delete":
                rules.append({"op": "delete", "path": path})
            elif t == "move":
                rules.append({"op": "move", "path": _msg_path(r.get("to"), r.get("tot"), "to"),
                              "from": path})
            elif t == "change":
                raise Unmappable("search and replace has no ChangeNode equivalent")
            else:
                raise Unmappable(f"unknown rule type {t!r:.20}")
        except Unmappable as err:
            notes.append(f"rule {i + 1}: {err}; dropped")
    return _one(nid, "ChangeNode", {"rules": rules}, notes=notes)


def _range(imp: _Importer, n: dict[str, Any], nid: str) -> _Mapped:
    action = {"scale": "scale", "clamp": "clamp", "roll": "wrap", "drop": "drop"}.get(
        str(n.get("action") or "scale"))
    if action is None:
        raise Unmappable(f"action {n.get('action')!r:.20} is unknown")
    params = {
        "property": _msg_path(n.get("property"), "msg", "property"),
        "action": action,
        "in_min": _num(n.get("minin"), "minin"),
        "in_max": _num(n.get("maxin"), "maxin"),
        "out_min": _num(n.get("minout"), "minout"),
        "out_max": _num(n.get("maxout"), "maxout"),
        "round": _true(n.get("round")),
    }
    return _one(nid, "RangeNode", params)


def _delay(imp: _Importer, n: dict[str, Any], nid: str) -> _Mapped:
    kind = n.get("pauseType", "delay")
    notes: list[str] = []
    if kind in ("delay", "delayv", "random"):
        if kind == "random":
            seconds = _seconds(n.get("randomLast"), n.get("randomUnits", "seconds"),
                               "randomLast", 5)
            notes.append(f"a random delay: imported as a fixed {seconds:g} s (its upper bound)")
        else:
            seconds = _seconds(n.get("timeout"), n.get("timeoutUnits", "seconds"), "timeout", 5)
            if kind == "delayv":
                notes.append("msg.delay overrides are not supported: the fixed delay is used")
        return _one(nid, "DelayNode", {"seconds": seconds}, notes=notes)
    if kind in ("rate", "queue", "timed"):
        per = _seconds(n.get("nbRateUnits", 1), n.get("rateUnits", "second"), "nbRateUnits", 1)
        rate = _num(n.get("rate"), "rate", 1)
        if rate <= 0 or per <= 0:
            raise Unmappable("rate and period must be > 0")
        if kind != "rate":
            notes.append(f"{kind} mode (per topic) is imported as one rate limit for all")
        if not _true(n.get("drop")):
            notes.append("Node-RED queues messages over the rate; RateLimitNode drops them"
                         " (counted)")
        if str(n.get("outputs", 1)) == "2":
            notes.append("the second output (dropped messages) has no equivalent")
        return _one(nid, "RateLimitNode", {"rate": rate, "per": per}, notes=notes)
    raise Unmappable(f"pauseType {kind!r:.20} is unknown")


def _trigger_value(op: Any, optype: Any, what: str, first: bool) -> tuple[str, Any]:
    """(what TriggerNode sends, the value) for Node-RED's op1/op2 and their types."""
    t = optype if isinstance(optype, str) and optype else "str"
    if t in ("pay", "payl"):
        return ("message", None) if first else (
            "first_message" if t == "pay" else "latest_message", None)
    if t == "nul":
        return "nothing", None
    if isinstance(op, str) and "{{" in op and t in ("str", "val"):
        raise Unmappable(f"{what} is a mustache template")
    if t == "val":  # the legacy type: true/false/null/text
        t = "bool" if op in ("true", "false") else "null" if op == "null" else "str"
    return "value", _typed(op, t, what)


def _trigger(imp: _Importer, n: dict[str, Any], nid: str) -> _Mapped:
    first, first_value = _trigger_value(n.get("op1", "1"), n.get("op1type"), "op1", True)
    then, second_value = _trigger_value(n.get("op2", "0"), n.get("op2type"), "op2", False)
    duration = _num(n.get("duration"), "duration", 250)
    seconds = _seconds(abs(duration), n.get("units", "ms"), "duration", 250)
    params: dict[str, Any] = {"first": first, "then": then, "seconds": seconds}
    if first == "value":
        params["first_value"] = first_value
    if then == "value":
        params["second_value"] = second_value
    notes: list[str] = []
    if duration < 0:
        params["repeat"] = True
        params.pop("then")
    elif _true(n.get("extend")):
        params["extend"] = True
    reset = n.get("reset")
    if isinstance(reset, str) and reset:
        params["reset_payload"] = reset
        notes.append(f"resets on payload {reset!r:.30} compared as a JSON value (Node-RED"
                     " compares text)")
    if n.get("bytopic") == "topic":
        params["per_topic"] = True
    exits = {0: (nid, "out")}
    if str(n.get("outputs", 1)) == "2":
        params["second_port"] = True
        exits[1] = (nid, "second")
    return _Mapped([{"id": nid, "type": "TriggerNode", "params": params}], nid, exits, notes)


def _lua_comment(js: str) -> str:
    """``js`` inside a Lua long comment whose brackets do not occur in it."""
    level = 0
    while f"]{'=' * level}]" in js:
        level += 1
    eq = "=" * level
    return f"--[{eq}[\n{js}\n]{eq}]"


def _function(imp: _Importer, n: dict[str, Any], nid: str) -> _Mapped:
    given = n.get("func")
    func: str = given if isinstance(given, str) else ""
    outputs = max(1, int(_num(n.get("outputs"), "outputs", 1)))
    if outputs > 32:
        raise Unmappable(f"{outputs} outputs (at most 32 are imported)")
    parts = ["-- Imported from a Node-RED function node: port the JavaScript below to Lua,",
             "-- then enable the node. msg is the message; return it, a list of",
             "-- {port, message} pairs, or nil.", _lua_comment(func)]
    for label in ("initialize", "finalize"):
        if isinstance(n.get(label), str) and n[label].strip():
            parts += [f"-- Node-RED {label} code:", _lua_comment(n[label])]
    parts.append("return nil")
    ports = [f"out{i + 1}" for i in range(1, outputs)]
    params: dict[str, Any] = {"script": "\n".join(parts)}
    if ports:
        params["ports"] = ports
    exits = {0: (nid, "out")} | {i: (nid, f"out{i + 1}") for i in range(1, outputs)}
    spec = {"id": nid, "type": "FunLogicNode", "params": params, "disabled": True,
            "ui": {"nodered": {"id": n["id"], "type": "function", "func": func}}}
    notes = ["function: JavaScript kept for porting (in the script and ui.nodered.func);"
             " imported disabled"]
    if n.get("libs"):
        notes.append("function modules (libs) are not available in Lua")
    return _Mapped([spec], nid, exits, notes)


def _mqtt_in(imp: _Importer, n: dict[str, Any], nid: str) -> _Mapped:
    if n.get("inputs") in (1, "1"):
        raise Unmappable("dynamic subscriptions (an input) are not supported")
    notes: list[str] = []
    datatype = n.get("datatype", "auto-detect")
    decode = {"json": "json", "utf8": "text", "buffer": "bytes", "base64": "text"}.get(
        datatype, "json")
    if datatype in ("auto", "auto-detect", None):
        notes.append("Node-RED guesses the payload type; decode is json (a non-JSON payload"
                     " is an error: set decode to text for plain text topics)")
    elif datatype == "base64":
        notes.append("base64 output: imported as text")
    params = {"topic": str(n.get("topic") or "#"),
              "connection": imp._connection(n, "broker", "mqtt-broker"),
              "qos": int(_num(n.get("qos"), "qos", 0)), "decode": decode}
    if params["qos"] not in (0, 1, 2):
        raise Unmappable(f"qos {params['qos']} is not 0, 1 or 2")
    return _one(nid, "MQTTInNode", params, source=True, notes=notes)


def _mqtt_out(imp: _Importer, n: dict[str, Any], nid: str) -> _Mapped:
    params: dict[str, Any] = {"connection": imp._connection(n, "broker", "mqtt-broker"),
                              "encode": "text"}
    if n.get("topic"):
        params["topic"] = str(n["topic"])
    if n.get("qos") not in (None, ""):
        params["qos"] = int(_num(n.get("qos"), "qos", 0))
    if _true(n.get("retain")):
        params["retain"] = True
    return _one(nid, "MQTTOutNode", params, ports=0)


def _bcm(n: dict[str, Any]) -> int:
    pin = int(_num(n.get("pin"), "pin"))
    if n.get("bcm") is True:
        return pin
    bcm = PIN_TO_BCM.get(pin)
    if bcm is None:
        raise Unmappable(f"header pin {pin} is not a GPIO pin")
    return bcm


def _gpio_in(imp: _Importer, n: dict[str, Any], nid: str) -> _Mapped:
    pull = {"up": "up", "down": "down", "tri": "none"}.get(str(n.get("intype") or "tri"), "none")
    params = {"pin": _bcm(n), "pull": pull,
              "bounce_ms": _int_or_float(_num(n.get("debounce"), "debounce", 25)),
              "edge": "both"}
    notes = ["read initial state: not supported"] if _true(n.get("read")) else []
    return _one(nid, "GPIOInNode", params, source=True, notes=notes)


def _gpio_out(imp: _Importer, n: dict[str, Any], nid: str) -> _Mapped:
    pin = _bcm(n)
    if n.get("out") == "pwm":
        freq = _num(n.get("freq"), "freq", 100)
        duty = f"{nid}_duty"[:64]
        scale = {"id": duty, "type": "RangeNode", "name": "duty 0..100 -> 0..1",
                 "params": {"action": "clamp", "in_min": 0, "in_max": 100,
                            "out_min": 0, "out_max": 1}}
        pwm = {"id": nid, "type": "PWMOutNode", "params": {"pin": pin, "frequency": freq},
               "_edges": [{"from": duty, "to": nid, "port": "out"}]}
        return _Mapped([pwm, scale], duty, {},
                       ["PWM takes 0..100 in Node-RED and 0..1 here: a RangeNode scales it"])
    params: dict[str, Any] = {"pin": pin}
    if _true(n.get("set")):
        params["initial"] = str(n.get("level", "0")) == "1"
    return _one(nid, "GPIOOutNode", params, ports=0)


def _serial_in(imp: _Importer, n: dict[str, Any], nid: str) -> _Mapped:
    conn = imp._connection(n, "serial", "serial-port")
    port = imp.by_id[str(n.get("serial"))]
    decode = "bytes" if port.get("bin") == "bin" else "text"
    return _one(nid, "SerialInNode", {"connection": conn, "decode": decode}, source=True)


def _serial_out(imp: _Importer, n: dict[str, Any], nid: str) -> _Mapped:
    conn = imp._connection(n, "serial", "serial-port")
    return _one(nid, "SerialOutNode", {"connection": conn, "encode": "text"}, ports=0)


_MODBUS_TABLES = {
    "Coil": ("coil", "bool"),
    "Input": ("discrete", "bool"),
    "HoldingRegister": ("holding", "uint16"),
    "InputRegister": ("input", "uint16"),
}


def _unit(imp: _Importer, n: dict[str, Any]) -> int:
    unit = n.get("unitid")
    if unit in (None, ""):
        unit = imp.by_id.get(str(n.get("server")), {}).get("unit_id", 1)
    u = int(_num(unit, "unitid", 1))
    if not 0 <= u <= 255:
        raise Unmappable(f"unit id {u} is not within 0..255")
    return u


def _modbus_read(imp: _Importer, n: dict[str, Any], nid: str) -> _Mapped:
    table, vtype = _MODBUS_TABLES.get(str(n.get("dataType")), (None, None))
    if table is None:
        raise Unmappable(f"dataType {n.get('dataType')!r:.30} is unknown")
    address = int(_num(n.get("adr"), "adr"))
    quantity = int(_num(n.get("quantity"), "quantity", 1))
    limit = 2000 if vtype == "bool" else 125
    if not 1 <= quantity <= limit or not 0 <= address <= 65535:
        raise Unmappable(f"address {address} / quantity {quantity} out of range")
    reads = [{"name": f"{table}_{address + i}", "table": table, "address": address + i,
              "type": vtype} for i in range(quantity)]
    interval = _seconds(n.get("rate"), n.get("rateUnit") or "s", "rate", 1)
    params = {"connection": imp._connection(n, "server", "modbus-client"),
              "unit": _unit(imp, n), "interval": interval, "reads": reads}
    notes = ["payload is {name: value} per register (Node-RED: an array)"]
    return _one(nid, "ModbusReadNode", params, source=True, notes=notes)


def _modbus_write(imp: _Importer, n: dict[str, Any], nid: str) -> _Mapped:
    kinds = {"Coil": ("coil", "bool"), "HoldingRegister": ("holding", "uint16")}
    found = kinds.get(str(n.get("dataType")))
    if found is None:
        raise Unmappable(f"dataType {n.get('dataType')!r:.30}: only single coil and single"
                         " register writes are supported")
    params = {"connection": imp._connection(n, "server", "modbus-client"),
              "unit": _unit(imp, n), "table": found[0],
              "address": int(_num(n.get("adr"), "adr")), "type": found[1]}
    return _one(nid, "ModbusWriteNode", params)


MAPPERS: dict[str, Mapper] = {
    "inject": _inject,
    "debug": _debug,
    "switch": _switch,
    "change": _change,
    "range": _range,
    "delay": _delay,
    "trigger": _trigger,
    "function": _function,
    "mqtt in": _mqtt_in,
    "mqtt out": _mqtt_out,
    "rpi-gpio in": _gpio_in,
    "rpi-gpio out": _gpio_out,
    "serial in": _serial_in,
    "serial out": _serial_out,
    "modbus-read": _modbus_read,
    "modbus-write": _modbus_write,
}


def convert(raw: Any) -> ImportResult:
    """Turn a parsed Node-RED flows.json into flow documents and a report (no deploy)."""
    return _Importer(raw).run()


def write_import(source: Path, out_dir: Path | None) -> int:
    """``mechaway import-nodered``: read ``source``, write ``<flow id>.json`` per tab into
    ``out_dir`` (or print the flows), print the report and the config sections.
    Returns the exit status: 1 when the file could not be read at all."""
    from mechaway.flow.parse import MAX_FLOW_FILE_BYTES

    try:
        data = files.read_capped(source, 4 * MAX_FLOW_FILE_BYTES)
        raw = orjson.loads(data)
    except OSError as err:
        print(f"mechaway: {source}: {err.strerror or err}", file=sys.stderr)
        return 1
    except orjson.JSONDecodeError as err:
        print(f"mechaway: {source}: invalid JSON at line {err.lineno} column {err.colno}: "
              f"{err.msg}", file=sys.stderr)
        return 1
    result = convert(raw)
    for doc in result.flows:
        text = orjson.dumps(doc, option=orjson.OPT_INDENT_2).decode() + "\n"
        if out_dir is None:
            print(text, end="")
            continue
        out_dir.mkdir(parents=True, exist_ok=True)
        path = out_dir / f"{doc['id']}.json"
        path.write_text(text, encoding="utf-8")
        print(f"wrote {path} ({len(doc['nodes'])} nodes, {len(doc['edges'])} edges)")
    print(f"\n{len(result.report)} report entries:")
    for p in result.report:
        where = f"[{p.flow}] " if p.flow else ""
        first, _, rest = p.problem.partition("\n")
        print(f"- {where}{p.node} ({p.type}): {first}")
        if rest:
            print("  " + rest.rstrip().replace("\n", "\n  "))
    if not result.flows:
        print("no tabs found: nothing imported", file=sys.stderr)
    return 0
