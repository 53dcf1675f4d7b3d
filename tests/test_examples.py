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
