"""The package's public face for plugin authors: ``from mechaway import Node, ...``."""

from __future__ import annotations

import ast
import importlib
import subprocess
import sys
from pathlib import Path

import pytest

import mechaway

PLUGIN = Path(__file__).resolve().parents[1] / "plugin_pkg" / "mechaway_example_plugin"


def test_every_public_name_resolves_to_the_object_it_names() -> None:
    for name in mechaway.__all__:
        value = getattr(mechaway, name)
        if name == "__version__":
            continue
        home = importlib.import_module(mechaway._EXPORTS[name])
        assert value is getattr(home, name), name
    assert set(mechaway.__all__) == {*mechaway._EXPORTS, "__version__"}
    assert {"Node", "SourceNode", "SinkNode", "NodeParams", "register_node"} <= set(dir(mechaway))


def test_an_unknown_name_is_an_attribute_error() -> None:
    with pytest.raises(AttributeError, match="has no attribute 'Nope'"):
        _ = mechaway.Nope  # type: ignore[attr-defined]


def test_import_mechaway_loads_nothing_else() -> None:
    code = (
        "import sys, mechaway, mechaway.errors\n"
        "print(sorted(m for m in sys.modules if m.startswith(('mechaway', 'msgspec'))))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout
    assert out.strip() == "['mechaway', 'mechaway.errors']"


def test_the_example_plugin_uses_only_the_public_face() -> None:
    sources = sorted(PLUGIN.glob("*.py"))
    assert sources
    seen = []
    for path in sources:
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("mechaway"):
                seen.append((path.name, node.module))
            elif isinstance(node, ast.Import):
                seen += [(path.name, a.name) for a in node.names if a.name.startswith("mechaway")]
    assert seen, "the example plugin imports mechaway"
    assert {module for _, module in seen} == {"mechaway"}, seen
