"""Every flow shipped in configs/ validates, and the example config loads."""

from __future__ import annotations

from pathlib import Path

import pytest

from mechaway.flow.parse import FLOW_SUFFIXES, read_file
from mechaway.flow.validate import validate
from mechaway.settings import load_settings

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
FLOWS = sorted(p for p in CONFIGS.rglob("*") if p.suffix in FLOW_SUFFIXES)


def test_there_are_example_flows() -> None:
    assert len(FLOWS) >= 3


@pytest.mark.parametrize("path", FLOWS, ids=lambda p: p.name)
def test_example_flow_validates(path: Path) -> None:
    valid = validate(read_file(path), source=str(path))
    assert valid.doc.nodes


def test_example_config_loads() -> None:
    settings = load_settings(CONFIGS / "mechaway.toml", env={})
    assert settings.api.listen == "127.0.0.1:7700"
    assert settings.flows.dir == "/etc/mechaway/flows"


def test_the_readmes_json_blocks_that_are_flows_validate() -> None:
    """The README's example flow is what a newcomer copies first: it must run as written."""
    import json
    import re

    readme = (CONFIGS.parent / "README.md").read_text()
    blocks = re.findall(r"```json\n(.*?)```", readme, flags=re.S)
    flows = [json.loads(b) for b in blocks]
    flows = [f for f in flows if isinstance(f, dict) and "nodes" in f]
    assert flows, "the README shows no flow"
    shipped = {read_file(p).get("id") for p in FLOWS}
    for doc in flows:
        assert validate(doc, source="README.md").doc.nodes
        assert doc["id"] not in shipped, f"README flow id {doc['id']!r} collides with configs/"


def test_every_relative_link_in_the_readme_and_docs_exists() -> None:
    """Nothing points at a file that is not there, or outside the repository."""
    import re

    root = CONFIGS.parent
    pages = [root / "README.md", *sorted((root / "docs").glob("*.md"))]
    broken = []
    for page in pages:
        for target in re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", page.read_text()):
            if "://" in target or target.startswith("mailto:"):
                continue
            path = (page.parent / target).resolve()
            if not path.is_relative_to(root) or not path.exists():
                broken.append(f"{page.relative_to(root)}: {target}")
    assert broken == []
