"""Suite-wide fixtures: every async test runs on a uvloop event loop."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import pytest
import uvloop

import mechaway.testing.nodes  # noqa: F401  (registers CollectNode, PassNode, ...)


def pytest_asyncio_loop_factories(
    config: pytest.Config, item: pytest.Item
) -> Mapping[str, Callable[[], Any]]:
    """pytest-asyncio runs each async test on a uvloop loop (the daemon's loop)."""
    return {"uvloop": uvloop.new_event_loop}


@pytest.fixture(autouse=True)
def _clear_collected() -> None:
    mechaway.testing.nodes.COLLECTED.clear()
