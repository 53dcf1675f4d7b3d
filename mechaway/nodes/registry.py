"""Node types registered by name: built-ins, entry-point plugins and WASM node packs.

Entry-point plugins (group ``mechaway.nodes``) are discovered here: an entry point names a
module (importing it registers its types with ``register_node``) or a callable (called with
no arguments). A plugin that fails to import is reported and skipped: it never stops the
daemon or the other node types. WASM node packs are loaded by ``mechaway.nodes.plugins``,
which registers through this module (it never imports that one: no cycle).
"""

from __future__ import annotations

import importlib
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import msgspec

from mechaway.errors import MechawayError
from mechaway.nodes.base import Node

log = logging.getLogger("mechaway.nodes")
plugin_log = logging.getLogger("mechaway.plugins")

N = TypeVar("N", bound=type[Node])

_TYPES: dict[str, type[Node]] = {}
_ORIGIN: dict[str, str] = {}

#: the built-in node types and the module that defines each: a flow imports only the
#: modules of the types it names (a Pi running an MQTT flow never loads the serial,
#: Modbus or PostgreSQL nodes). tests/nodes/test_registry.py holds it to the modules.
BUILTIN_TYPES: dict[str, str] = {
    "InjectNode": "mechaway.nodes.inject",
    **dict.fromkeys(
        ("ChangeNode", "DeadbandNode", "FilterNode", "JSONTransformNode", "RouteNode"),
        "mechaway.nodes.transform",
    ),
    **dict.fromkeys(
        ("DebounceNode", "DelayNode", "RateLimitNode", "WindowNode"), "mechaway.nodes.timing"
    ),
    "LogNode": "mechaway.nodes.debug",
    **dict.fromkeys(("MQTTInNode", "MQTTOutNode"), "mechaway.nodes.mqtt"),
    **dict.fromkeys(("FunLogicNode", "WASMNode"), "mechaway.nodes.logic"),
    **dict.fromkeys(
        ("KVGetNode", "KVSetNode", "StoreNode", "UpstreamNode", "VectorQueryNode",
         "VectorStoreNode"),
        "mechaway.nodes.storage",
    ),
    **dict.fromkeys(("ModbusReadNode", "ModbusWriteNode"), "mechaway.nodes.modbus"),
    **dict.fromkeys(("RangeNode", "TriggerNode"), "mechaway.nodes.shaping"),
    **dict.fromkeys(("GPIOInNode", "GPIOOutNode", "PWMOutNode"), "mechaway.nodes.gpio"),
    **dict.fromkeys(("I2CReadNode", "I2CWriteNode"), "mechaway.nodes.i2c"),
    **dict.fromkeys(("SerialInNode", "SerialOutNode"), "mechaway.nodes.serial"),
    **dict.fromkeys(
        ("HTTPRequestNode", "HTTPResponseNode", "WebhookNode"), "mechaway.nodes.http"
    ),
    **dict.fromkeys(("WebSocketInNode", "WebSocketOutNode"), "mechaway.nodes.websocket"),
    **dict.fromkeys(("PostgresNode", "PostgresQueryNode"), "mechaway.nodes.postgres"),
}

#: modules holding the built-in node types (all of them: listings, unknown names)
BUILTIN_MODULES = tuple(dict.fromkeys(BUILTIN_TYPES.values()))


class DuplicateNodeType(MechawayError):
    """Two node types claim the same name."""


def register_node(name: str, *, origin: str = "") -> Callable[[N], N]:
    """Class decorator: register a ``Node`` subclass under ``name`` (fails on duplicates)."""

    def deco(cls: N) -> N:
        if not name or not name.isidentifier():
            raise ValueError(f"node type name {name!r} must be an identifier")
        existing = _TYPES.get(name)
        if existing is not None and existing is not cls:
            raise DuplicateNodeType(
                f"node type {name!r} is already registered by {_ORIGIN.get(name, '?')}"
            )
        cls.type_name = name
        _TYPES[name] = cls
        _ORIGIN[name] = origin or cls.__module__
        return cls

    return deco


def unregister_node(name: str) -> None:
    """Remove a node type (used when a plugin pack is removed)."""
    _TYPES.pop(name, None)
    _ORIGIN.pop(name, None)


_loaded = False


def _ensure_builtins() -> None:
    global _loaded
    if _loaded:
        return
    _loaded = True
    for mod in BUILTIN_MODULES:
        importlib.import_module(mod)


def _load_plugins() -> None:
    """Discover entry-point plugins (once; importlib.metadata costs ~2.4 MB of RSS, so the
    scan waits until a flow names a type that is not built in, or types are listed)."""
    load_entry_points()


def get_node_type(name: str) -> type[Node] | None:
    """The class registered as ``name`` (built-in, pack or plugin), or ``None``."""
    cls = _TYPES.get(name)
    if cls is not None:
        return cls
    module = BUILTIN_TYPES.get(name)
    if module is not None:  # a built-in: its own module only
        importlib.import_module(module)
        cls = _TYPES.get(name)
        if cls is not None:
            return cls
    _ensure_builtins()  # a name we do not know: every built-in, then the plugins
    cls = _TYPES.get(name)
    if cls is None:
        _load_plugins()
        cls = _TYPES.get(name)
    return cls


def node_types() -> dict[str, type[Node]]:
    """Every registered node type by name (a copy), plugins included."""
    _ensure_builtins()
    _load_plugins()
    return dict(sorted(_TYPES.items()))


def origin(name: str) -> str:
    """Where a node type came from (module or plugin)."""
    return _ORIGIN.get(name, "")


def params_schema(name: str) -> dict[str, Any]:
    """The JSON Schema of a node type's params."""
    cls = get_node_type(name)
    if cls is None:
        raise KeyError(name)
    schema: dict[str, Any] = msgspec.json.schema(cls.Params)
    schema.setdefault("title", name)
    if cls.__doc__:
        schema.setdefault("description", cls.__doc__.strip().splitlines()[0])
    return schema


@dataclass(frozen=True, slots=True)
class PluginReport:
    """Outcome of loading one plugin: ``error`` is empty when it loaded."""

    name: str
    source: str
    types: tuple[str, ...]
    error: str = ""


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

    _ensure_builtins()
    for ep in entry_points(group=GROUP):
        key = f"{ep.name}={ep.value}"
        if key in _reports:
            continue
        before = set(_TYPES)
        try:
            obj = ep.load()
            if callable(obj) and not isinstance(obj, type):
                obj()
        except (Exception, SystemExit) as err:  # sys.exit() in a plugin must not end the daemon
            report = PluginReport(
                ep.name, f"entry point {ep.value}", (), f"{type(err).__name__}: {err}"
            )
            plugin_log.error("plugin %s (%s) skipped: %s", ep.name, ep.value, report.error)
        else:
            new = tuple(sorted(set(_TYPES) - before))
            report = PluginReport(ep.name, f"entry point {ep.value}", new)
            plugin_log.info("plugin %s: node types %s", ep.name, ", ".join(new) or "(none)")
        _reports[key] = report
    return list(_reports.values())


def reports() -> list[PluginReport]:
    """What the entry-point scan found so far (no scan)."""
    return list(_reports.values())
