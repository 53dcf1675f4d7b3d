"""The registry's map of built-in types to modules: a flow imports only what it names."""

from __future__ import annotations

import ast
import subprocess
import sys

from mechaway.nodes import registry


def test_the_map_names_every_built_in_type_and_its_module() -> None:
    for module in registry.BUILTIN_MODULES:
        __import__(module)
    built_in = {
        name: origin
        for name, origin in registry._ORIGIN.items()
        if origin in registry.BUILTIN_MODULES
    }
    assert built_in == registry.BUILTIN_TYPES


def test_validating_a_flow_imports_only_the_modules_of_its_types() -> None:
    code = (
        "import sys\n"
        "from mechaway.flow.validate import validate\n"
        "validate({'id': 'f', 'nodes': [{'id': 't', 'type': 'InjectNode', 'params':"
        " {'interval': 1}}, {'id': 'l', 'type': 'LogNode'}], 'edges': [{'from': 't',"
        " 'to': 'l'}]})\n"
        "print(sorted(m for m in sys.modules if m.startswith('mechaway.nodes.')))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout
    loaded = {m for m in ast.literal_eval(out) if m in registry.BUILTIN_MODULES}
    assert loaded == {"mechaway.nodes.inject", "mechaway.nodes.debug"}
