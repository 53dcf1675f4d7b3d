"""Third-party node types from installed packages (entry point group ``mechaway.nodes``).

An entry point names a module (importing it registers its types with ``register_node``)
or a callable (called with no arguments). A plugin that fails to import is reported and
skipped: it never stops the daemon or the other node types.
"""

from __future__ import annotations

import logging
from importlib.metadata import entry_points

from mechaway.nodes.registry import PluginReport, node_types

log = logging.getLogger("mechaway.plugins")

GROUP = "mechaway.nodes"
_reports: dict[str, PluginReport] = {}


def load_entry_points() -> list[PluginReport]:
    """Load every not-yet-loaded entry point of the group; return one report each."""
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
    return list(_reports.values())
