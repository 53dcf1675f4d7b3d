"""Third-party node types from installed packages (entry point group ``mechaway.nodes``).

An entry point names a module (importing it registers its types with ``register_node``)
or a callable (called with no arguments). A plugin that fails to import is reported and
skipped: it never stops the daemon or the other node types.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import msgspec
import orjson

from mechaway.nodes.base import Node, NodeParams
from mechaway.nodes.registry import (
    PluginReport,
    get_node_type,
    node_types,
    register_node,
    unregister_node,
)
from mechaway.nodes.registry import origin as registry_origin

log = logging.getLogger("mechaway.plugins")

GROUP = "mechaway.nodes"
_reports: dict[str, PluginReport] = {}
_scanned = False


def load_entry_points(*, rescan: bool = False) -> list[PluginReport]:
    """Load every not-yet-loaded entry point of the group (scanned once per process unless
    ``rescan``); return one report each."""
    global _scanned
    if _scanned and not rescan:
        return list(_reports.values())
    _scanned = True
    from importlib.metadata import entry_points

    for ep in entry_points(group=GROUP):
        key = f"{ep.name}={ep.value}"
        if key in _reports:
            continue
        before = set(node_types())
        try:
            obj = ep.load()
            if callable(obj) and not isinstance(obj, type):
                obj()
        except Exception as err:
            report = PluginReport(
                ep.name, f"entry point {ep.value}", (), f"{type(err).__name__}: {err}"
            )
            log.error("plugin %s (%s) skipped: %s", ep.name, ep.value, report.error)
        else:
            new = tuple(sorted(set(node_types()) - before))
            report = PluginReport(ep.name, f"entry point {ep.value}", new)
            log.info("plugin %s: node types %s", ep.name, ", ".join(new) or "(none)")
        _reports[key] = report
    return list(_reports.values())


def reports() -> list[PluginReport]:
    """What the entry-point scan found so far (no scan)."""
    return list(_reports.values())


# -- WASM node packs ---------------------------------------------------------------------------
# <data_dir>/plugins/NAME.wasm + NAME.json, the manifest:
#   {"type": "ScaleNode", "description": "...", "codec": "msgpack", "ports": ["high"],
#    "fuel": 10000000, "max_memory_kb": 16384,
#    "params": {"type": "object", "properties": {"factor": {"type": "number", "default": 1}},
#               "required": [], "additionalProperties": false}}
# The params schema (a JSON Schema subset: object of string/number/integer/boolean/array/
# object properties, required, defaults) becomes a msgspec Struct, so pack node types
# validate, report errors and export their schema exactly like built-in ones.

_JSON_TYPES: dict[str, Any] = {
    "string": str,
    "number": float,
    "integer": int,
    "boolean": bool,
    "array": list[Any],
    "object": dict[str, Any],
}


class ManifestError(ValueError):
    """A pack's manifest is unusable; the message says which key and why."""


def params_struct(type_name: str, schema: dict[str, Any]) -> type[NodeParams]:
    """Build a strict params struct from a manifest's JSON Schema subset."""
    if schema.get("type", "object") != "object":
        raise ManifestError("params.type must be 'object'")
    props = schema.get("properties", {})
    required = set(schema.get("required", []))
    if not isinstance(props, dict) or not isinstance(required, set):
        raise ManifestError("params.properties must be an object")
    fields: list[Any] = []
    for name, spec in props.items():
        if not isinstance(name, str) or not name.isidentifier():
            raise ManifestError(f"params.properties: {name!r} is not an identifier")
        if not isinstance(spec, dict):
            raise ManifestError(f"params.properties.{name} must be an object")
        jtype = spec.get("type")
        if jtype not in _JSON_TYPES:
            raise ManifestError(
                f"params.properties.{name}.type must be one of {', '.join(_JSON_TYPES)}"
            )
        py: Any = _JSON_TYPES[jtype]
        if "enum" in spec:
            if not isinstance(spec["enum"], list) or not spec["enum"]:
                raise ManifestError(f"params.properties.{name}.enum must be a non-empty list")
            py = Literal[tuple(spec["enum"])]
        if jtype == "number":
            py = float | int if "enum" not in spec else py
        if name in required:
            fields.append((name, py))
        elif "default" in spec:
            fields.append((name, py, spec["default"]))
        else:
            fields.append((name, py | None, None))
    struct: type[NodeParams] = msgspec.defstruct(  # type: ignore[assignment]
        f"{type_name}Params", fields, bases=(NodeParams,), kw_only=True,
        forbid_unknown_fields=True,
    )
    return struct


@dataclass
class _Pack:
    manifest: Path
    module: Path
    signature: tuple[float, float]
    type_name: str = ""
    error: str = ""


def load_pack(manifest_path: Path) -> str:
    """Register the node type a pack describes; returns the type name or raises."""
    from mechaway.nodes.logic import WASMNode, resolve_module

    try:
        manifest = orjson.loads(manifest_path.read_bytes())
    except (OSError, orjson.JSONDecodeError) as err:
        raise ManifestError(f"cannot read manifest: {err}") from err
    if not isinstance(manifest, dict):
        raise ManifestError("manifest must be a JSON object")
    type_name = manifest.get("type")
    if not isinstance(type_name, str) or not type_name.isidentifier():
        raise ManifestError("type must be an identifier like ScaleNode")
    module = manifest_path.with_suffix(".wasm")
    if not module.is_file():
        raise ManifestError(f"module {module.name} is missing")
    params_cls = params_struct(type_name, manifest.get("params", {}))
    codec = manifest.get("codec", "msgpack")
    if codec not in ("msgpack", "json"):
        raise ManifestError("codec must be msgpack or json")
    ports = manifest.get("ports", [])
    if not isinstance(ports, list) or not all(isinstance(p, str) and p for p in ports):
        raise ManifestError("ports must be a list of names")
    fuel = int(manifest.get("fuel", 10_000_000))
    memory_kb = int(manifest.get("max_memory_kb", 16 * 1024))
    description = str(manifest.get("description", f"WASM node from {module.name}"))

    class PackNode(WASMNode):
        Params = params_cls

        @classmethod
        def output_ports(cls, params: Any) -> tuple[str, ...]:
            return ("out", *ports)

        def __init__(self, node_id: str, params: Any, ctx: Any) -> None:
            Node.__init__(self, node_id, params, ctx)
            from mechaway.logic.wasm import WasmSandbox

            data_dir = Path(ctx.services.data_dir)
            self._wasm = WasmSandbox(
                resolve_module(str(module), data_dir),
                name=f"{ctx.flow_id}.{node_id}",
                params=msgspec.to_builtins(params),
                codec=codec,
                fuel=fuel,
                max_memory_bytes=memory_kb * 1024,
                cache_dir=data_dir / "wasm-cache",
            )
            self.process = self._wasm.call  # type: ignore[method-assign]

    PackNode.__doc__ = description
    PackNode.__name__ = PackNode.__qualname__ = type_name
    existing = get_node_type(type_name)
    if existing is not None and registry_origin(type_name) != f"wasm pack {manifest_path}":
        raise ManifestError(f"type {type_name} is already provided by {registry_origin(type_name)}")
    unregister_node(type_name)
    register_node(type_name, origin=f"wasm pack {manifest_path}")(PackNode)
    return type_name


class PackWatcher:
    """Picks up, reloads and drops WASM node packs in a directory without a restart."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.packs: dict[Path, _Pack] = {}

    def scan(self) -> list[PluginReport]:
        """One pass: load new or changed packs, unregister removed ones."""
        seen: set[Path] = set()
        try:
            manifests = sorted(self.directory.glob("*.json"))
        except OSError:
            manifests = []
        for m in manifests:
            seen.add(m)
            module = m.with_suffix(".wasm")
            try:
                sig = (m.stat().st_mtime, module.stat().st_mtime if module.exists() else 0.0)
            except OSError:
                continue
            old = self.packs.get(m)
            if old is not None and old.signature == sig:
                continue
            pack = _Pack(m, module, sig)
            try:
                pack.type_name = load_pack(m)
                log.info("wasm pack %s: node type %s", m.name, pack.type_name)
            except Exception as err:
                pack.error = f"{type(err).__name__}: {err}"
                if old is not None and old.type_name:
                    pack.type_name = old.type_name  # the previous version stays registered
                log.error("wasm pack %s skipped: %s", m, pack.error)
            self.packs[m] = pack
        for m in [p for p in self.packs if p not in seen]:
            gone = self.packs.pop(m)
            if gone.type_name and registry_origin(gone.type_name) == f"wasm pack {m}":
                unregister_node(gone.type_name)
                log.info("wasm pack %s removed: node type %s unregistered", m.name, gone.type_name)
        return self.reports()

    def reports(self) -> list[PluginReport]:
        return [
            PluginReport(p.manifest.stem, f"wasm pack {p.manifest}",
                         (p.type_name,) if p.type_name and not p.error else (), p.error)
            for p in self.packs.values()
        ]
