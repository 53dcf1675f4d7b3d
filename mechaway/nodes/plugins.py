"""Third-party node types: WASM node packs dropped into ``<data_dir>/plugins``.

Entry-point plugins (installed packages, group ``mechaway.nodes``) are discovered by the
registry (``mechaway.nodes.registry.load_entry_points``, re-exported here).
"""

from __future__ import annotations

import copy
import functools
import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal

import msgspec
import orjson

from mechaway.errors import located
from mechaway.nodes.base import NodeParams
from mechaway.nodes.registry import (
    GROUP,
    PluginReport,
    get_node_type,
    load_entry_points,
    register_node,
    reports,
    unregister_node,
)
from mechaway.nodes.registry import origin as registry_origin

if TYPE_CHECKING:
    from mechaway.logic.wasm import CompiledModule
    from mechaway.nodes.context import NodeContext

log = logging.getLogger("mechaway.plugins")

__all__ = ["GROUP", "ManifestError", "PackWatcher", "load_entry_points", "load_pack", "reports"]


# -- WASM node packs ---------------------------------------------------------------------------
# <data_dir>/plugins/NAME.wasm + NAME.json, the manifest:
#   {"type": "ScaleNode", "description": "...", "codec": "msgpack", "ports": ["high"],
#    "fuel": 10000000, "max_memory_kb": 16384,
#    "params": {"type": "object", "properties": {"factor": {"type": "number", "default": 1}},
#               "required": [], "additionalProperties": false}}
# The params schema (a JSON Schema subset: object of string/number/integer/boolean/array/
# object properties, required, defaults, enum, bounds) becomes a msgspec Struct, so pack
# node types validate, report errors and export their schema exactly like built-in ones.
# A keyword outside the subset is an error, never silently ignored: a bound the struct
# did not enforce would reach the module unchecked.
#
# Everything a pack brings is checked when the pack loads (in the watcher's thread): the
# manifest, its schema, and the module, compiled and instantiated once under the pack's
# limits. A registered pack type holds its compiled module, so creating a node on the
# event loop only instantiates it, and a broken rewrite of a pack leaves the previous
# version working.

MAX_MANIFEST_BYTES = 256 * 1024
MAX_PACKS = 256
_MAX_PROPERTIES = 256
_MAX_NAME = 64
_MAX_ENUM = 1024
_MAX_SCHEMA_DEPTH = 8
_MAX_FUEL = 1_000_000_000  # ~seconds of one call on the event loop: more is a hang

_JSON_TYPES: dict[str, Any] = {
    "string": str,
    "number": float,
    "integer": int,
    "boolean": bool,
    "array": list[Any],
    "object": dict[str, Any],
}
_ANNOTATIONS = {"description", "title", "$comment", "examples", "default"}
_BOUNDS: dict[str, tuple[str, frozenset[str]]] = {  # keyword -> (Meta arg, types)
    "minimum": ("ge", frozenset({"number", "integer"})),
    "maximum": ("le", frozenset({"number", "integer"})),
    "exclusiveMinimum": ("gt", frozenset({"number", "integer"})),
    "exclusiveMaximum": ("lt", frozenset({"number", "integer"})),
    "multipleOf": ("multiple_of", frozenset({"number", "integer"})),
    "minLength": ("min_length", frozenset({"string"})),
    "maxLength": ("max_length", frozenset({"string"})),
    "minItems": ("min_length", frozenset({"array"})),
    "maxItems": ("max_length", frozenset({"array"})),
    "minProperties": ("min_length", frozenset({"object"})),
    "maxProperties": ("max_length", frozenset({"object"})),
}
_TOP_KEYS = {"type", "properties", "required", "additionalProperties", "title",
             "description", "$schema", "$comment"}  # fmt: skip


class ManifestError(ValueError):
    """A pack's manifest is unusable; the message says which key and why."""


class _Manifest(msgspec.Struct, forbid_unknown_fields=True):
    type: Annotated[str, msgspec.Meta(min_length=1, max_length=_MAX_NAME)]
    description: Annotated[str, msgspec.Meta(max_length=4096)] = ""
    codec: Literal["msgpack", "json"] = "msgpack"
    ports: Annotated[
        list[Annotated[str, msgspec.Meta(min_length=1, max_length=_MAX_NAME)]],
        msgspec.Meta(max_length=64),
    ] = []
    fuel: Annotated[int, msgspec.Meta(ge=1000, le=_MAX_FUEL)] = 10_000_000
    max_memory_kb: Annotated[int, msgspec.Meta(ge=64, le=2 * 1024 * 1024)] = 16 * 1024
    params: dict[str, Any] = {}


def _is_number(v: Any) -> bool:
    return type(v) in (int, float) and math.isfinite(v)


def _field_type(where: str, spec: Any, depth: int = 0) -> Any:
    """The Python type (with msgspec constraints) of one property's schema."""
    if not isinstance(spec, dict):
        raise ManifestError(f"{where} must be an object")
    jtype = spec.get("type")
    if not isinstance(jtype, str) or jtype not in _JSON_TYPES:
        raise ManifestError(f"{where}.type must be one of {', '.join(_JSON_TYPES)}")
    allowed = set(_ANNOTATIONS) | {"type", "enum"}
    allowed |= {k for k, (_, types) in _BOUNDS.items() if jtype in types}
    if jtype == "array":
        allowed.add("items")
    for key in spec:
        if key not in allowed:
            raise ManifestError(
                f"{where}: keyword {key!r} is not supported for type {jtype} (supported: "
                f"{', '.join(sorted(allowed))})"
            )
    meta: dict[str, Any] = {}
    for key in ("description", "title"):
        if key in spec:
            if not isinstance(spec[key], str):
                raise ManifestError(f"{where}.{key} must be a string")
            meta[key] = spec[key]
    bounds: dict[str, Any] = {}
    for key, (arg, _) in _BOUNDS.items():
        if key not in spec:
            continue
        v = spec[key]
        if arg in ("min_length", "max_length"):
            if type(v) is not int or v < 0:
                raise ManifestError(f"{where}.{key} must be a non-negative integer")
        elif not _is_number(v) or (arg == "multiple_of" and v <= 0):
            raise ManifestError(f"{where}.{key} must be a finite (positive) number")
        bounds[arg] = v
    if "enum" in spec:
        enum = spec["enum"]
        if not isinstance(enum, list) or not 0 < len(enum) <= _MAX_ENUM:
            raise ManifestError(f"{where}.enum must be a non-empty list (at most {_MAX_ENUM})")
        if bounds:
            raise ManifestError(f"{where}: enum and bounds ({', '.join(bounds)}) together")
        base = float | int if jtype == "number" else _JSON_TYPES[jtype]
        for i, v in enumerate(enum):
            if v is not None and type(v) not in (str, int, bool):
                raise ManifestError(
                    f"{where}.enum[{i}]: only strings, integers and booleans can be enum values"
                )
            try:
                msgspec.convert(v, base)
            except msgspec.ValidationError as err:
                raise ManifestError(f"{where}.enum[{i}]: {err}") from err
        py: Any = Literal[tuple(enum)]
    elif jtype == "number":
        if bounds:
            py = Annotated[float, msgspec.Meta(**bounds)] | Annotated[int, msgspec.Meta(**bounds)]
        else:
            py = float | int
    else:
        py = _JSON_TYPES[jtype]
        if jtype == "array" and "items" in spec:
            if depth >= _MAX_SCHEMA_DEPTH:
                raise ManifestError(f"{where}.items: nested deeper than {_MAX_SCHEMA_DEPTH}")
            py = list[_field_type(f"{where}.items", spec["items"], depth + 1)]  # type: ignore[misc]
        if bounds:
            py = Annotated[py, msgspec.Meta(**bounds)]
    if meta:
        py = Annotated[py, msgspec.Meta(**meta)]
    return py


def params_struct(type_name: str, schema: Any) -> type[NodeParams]:
    """Build a strict params struct from a manifest's JSON Schema subset.

    Raises ManifestError naming the key for anything the subset does not cover, and for
    defaults that the schema itself refuses.
    """
    if not isinstance(schema, dict):
        raise ManifestError("params must be a JSON Schema object")
    for key in schema:
        if key not in _TOP_KEYS:
            raise ManifestError(
                f"params: keyword {key!r} is not supported (supported: "
                f"{', '.join(sorted(_TOP_KEYS))}; no $ref, $defs or combinators)"
            )
    if schema.get("type", "object") != "object":
        raise ManifestError("params.type must be 'object'")
    if schema.get("additionalProperties", False) is not False:
        raise ManifestError("params.additionalProperties must be false: params are strict")
    props = schema.get("properties", {})
    if not isinstance(props, dict):
        raise ManifestError("params.properties must be an object")
    if len(props) > _MAX_PROPERTIES:
        raise ManifestError(f"params.properties: more than {_MAX_PROPERTIES} properties")
    required = schema.get("required", [])
    if not isinstance(required, list) or not all(isinstance(r, str) for r in required):
        raise ManifestError("params.required must be a list of property names")
    for r in required:
        if r not in props:
            raise ManifestError(f"params.required: {r[:_MAX_NAME]!r} is not in params.properties")
    fields: list[Any] = []
    for name, spec in props.items():
        where = f"params.properties.{name[:_MAX_NAME]}"
        if not name.isidentifier() or len(name) > _MAX_NAME:
            raise ManifestError(
                f"params.properties: {name[:_MAX_NAME]!r} is not an identifier "
                f"(at most {_MAX_NAME} characters)"
            )
        if name.startswith("_") or hasattr(NodeParams, name):
            raise ManifestError(f"{where}: the name is reserved (leading _ or a struct attribute)")
        py = _field_type(where, spec)
        if name in required:
            fields.append((name, py))
        elif isinstance(spec, dict) and "default" in spec:
            try:
                default = msgspec.convert(spec["default"], py)
            except msgspec.ValidationError as err:
                raise ManifestError(f"{where}.default does not fit the schema: {err}") from err
            if isinstance(default, list | dict) and default:  # a fresh copy per node
                fields.append((name, py, msgspec.field(
                    default_factory=functools.partial(copy.deepcopy, default))))  # fmt: skip
            else:
                fields.append((name, py, default))
        else:
            fields.append((name, py | None, None))
    try:
        struct: type[NodeParams] = msgspec.defstruct(  # type: ignore[assignment]
            f"{type_name}Params", fields, bases=(NodeParams,), kw_only=True,
            forbid_unknown_fields=True,
        )  # fmt: skip
        msgspec.json.schema(struct)  # what validation and the API will ask of it
    except (TypeError, ValueError) as err:
        raise ManifestError(f"params: {err}") from err
    return struct


@dataclass
class _Pack:
    manifest: Path
    module: Path
    signature: tuple[int, ...]
    type_name: str = ""  # registered from this pack (maybe an earlier version)
    error: str = ""
    retry: bool = False  # the error may go away by itself (another pack holds the type)


def _inside(path: Path, root: Path, what: str) -> Path:
    """``path`` with symlinks resolved, refused if that leaves ``root``."""
    real, real_root = path.resolve(), root.resolve()
    if not real.is_relative_to(real_root):
        raise ManifestError(f"{what} {path.name} resolves to {real}, outside {real_root}")
    return real


def _read_manifest(manifest_path: Path, root: Path) -> _Manifest:
    from mechaway.files import read_capped

    try:
        data = read_capped(_inside(manifest_path, root, "manifest"), MAX_MANIFEST_BYTES)
        raw = orjson.loads(data)
    except OSError as err:
        raise ManifestError(f"cannot read manifest: {err.strerror or err}") from err
    except orjson.JSONDecodeError as err:
        raise ManifestError(f"cannot read manifest: not JSON: {err}") from err
    if not isinstance(raw, dict):
        raise ManifestError("manifest must be a JSON object")
    try:
        return msgspec.convert(raw, _Manifest)
    except msgspec.ValidationError as err:
        raise ManifestError(located(err, "manifest")) from err


def load_pack(manifest_path: Path, cache_dir: Path | None = None) -> str:
    """Register the node type a pack describes; returns the type name or raises.

    Blocking (reads, compiles and instantiates the module once): call it off the event
    loop. Raises ManifestError or WasmLoadError, whose text names the file and the key.
    """
    from mechaway.logic.wasm import load_module
    from mechaway.nodes.logic import WasmCallNode, _check_ports

    root = manifest_path.parent
    manifest = _read_manifest(manifest_path, root)
    type_name = manifest.type
    if not type_name.isidentifier():
        raise ManifestError("type must be an identifier like ScaleNode")
    try:
        _check_ports(manifest.ports)
    except ValueError as err:
        raise ManifestError(f"ports: {err}") from err
    if len(set(manifest.ports)) != len(manifest.ports):
        raise ManifestError("ports: a port is named twice")
    source = f"wasm pack {manifest_path}"
    if get_node_type(type_name) is not None and registry_origin(type_name) != source:
        raise ManifestError(f"type {type_name} is already provided by {registry_origin(type_name)}")
    params_cls = params_struct(type_name, manifest.params)
    module = manifest_path.with_suffix(".wasm")
    if not module.exists() and not module.is_symlink():
        raise ManifestError(f"module {module.name} is missing")
    compiled_module = load_module(
        _inside(module, root, "module"),
        name=f"wasm pack {manifest_path.name}",
        fuel=manifest.fuel,
        max_memory_bytes=manifest.max_memory_kb * 1024,
        cache_dir=cache_dir,
    )
    ports, codec = tuple(manifest.ports), manifest.codec
    fuel, memory = manifest.fuel, manifest.max_memory_kb * 1024

    class PackNode(WasmCallNode[NodeParams]):
        Params = params_cls
        compiled: CompiledModule = compiled_module

        @classmethod
        def output_ports(cls, params: NodeParams) -> tuple[str, ...]:
            return ("out", *ports)

        def __init__(self, node_id: str, params: NodeParams, ctx: NodeContext) -> None:
            super().__init__(node_id, params, ctx)
            from mechaway.logic.wasm import WasmSandbox

            self._wasm = WasmSandbox(
                self.compiled,
                name=f"{ctx.flow_id}.{node_id}",
                params=msgspec.to_builtins(params),
                codec=codec,
                fuel=fuel,
                max_memory_bytes=memory,
            )
            self.process = self._wasm.call  # type: ignore[method-assign]

    PackNode.__doc__ = manifest.description or f"WASM node from {module.name}"
    PackNode.__name__ = PackNode.__qualname__ = type_name
    unregister_node(type_name)
    register_node(type_name, origin=source)(PackNode)
    return type_name


def _signature(manifest: Path, module: Path) -> tuple[int, ...]:
    """What changes when either file is rewritten, replaced or removed (follows links)."""
    sig: list[int] = []
    for path in (manifest, module):
        try:
            st = path.stat()
        except OSError:
            sig += [0, 0, 0, 0]
        else:
            sig += [st.st_mtime_ns, st.st_ctime_ns, st.st_size, st.st_ino]
    return tuple(sig)


class PackWatcher:
    """Picks up, reloads and drops WASM node packs in a directory without a restart.

    Compiled modules are cached in ``cache_dir`` (default: ``wasm-cache`` next to the
    pack directory, i.e. ``<data_dir>/wasm-cache``). ``scan`` blocks: run it in a thread.
    """

    def __init__(self, directory: Path, cache_dir: Path | None = None) -> None:
        self.directory = directory
        self.cache_dir = cache_dir if cache_dir is not None else directory.parent / "wasm-cache"
        self.packs: dict[Path, _Pack] = {}

    def scan(self) -> list[PluginReport]:
        """One pass: load new or changed packs, unregister removed ones."""
        try:
            manifests = sorted(self.directory.glob("*.json"))
        except OSError:
            manifests = []
        seen = set(manifests)
        for m in [p for p in self.packs if p not in seen]:
            gone = self.packs.pop(m)
            self._unregister(m, gone.type_name)
        for i, m in enumerate(manifests):
            module = m.with_suffix(".wasm")
            sig = _signature(m, module)
            old = self.packs.get(m)
            if old is not None and old.signature == sig and not old.retry:
                continue
            pack = _Pack(m, module, sig)
            if i >= MAX_PACKS:
                pack.error = f"ManifestError: more than {MAX_PACKS} packs in {self.directory}"
                pack.retry = True  # room may come free
            else:
                try:
                    pack.type_name = load_pack(m, self.cache_dir)
                except Exception as err:
                    pack.error = f"{type(err).__name__}: {err}"
                    pack.retry = "is already provided by" in pack.error
                else:
                    log.info("wasm pack %s: node type %s", m.name, pack.type_name)
            if old is not None and old.type_name and old.type_name != pack.type_name:
                if pack.error:
                    pack.type_name = old.type_name  # the previous version stays registered
                else:
                    self._unregister(m, old.type_name)  # renamed: the old name goes
            if pack.error and (old is None or old.error != pack.error):
                log.error("wasm pack %s skipped: %s", m, pack.error)
            self.packs[m] = pack
        return self.reports()

    @staticmethod
    def _unregister(manifest: Path, type_name: str) -> None:
        if type_name and registry_origin(type_name) == f"wasm pack {manifest}":
            unregister_node(type_name)
            log.info("wasm pack %s removed: node type %s unregistered", manifest.name, type_name)

    def reports(self) -> list[PluginReport]:
        """One report per manifest; a failed reload says that the previous version runs on."""
        out = []
        for p in self.packs.values():
            error = p.error
            if error and p.type_name:
                error += f" (the previous version of {p.type_name} stays in use)"
            types = (p.type_name,) if p.type_name else ()
            out.append(PluginReport(p.manifest.stem, f"wasm pack {p.manifest}", types, error))
        return out
