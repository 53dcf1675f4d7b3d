"""Suite-wide fixtures: every async test runs on uvloop, with asyncio debug checks on."""

from __future__ import annotations

import asyncio
import os

import pytest
import uvloop

import mechaway.testing.nodes  # noqa: F401  (registers CollectNode, PassNode, ...)

os.environ.setdefault("PYTHONASYNCIODEBUG", "0")


@pytest.fixture(scope="session")
def event_loop_policy() -> asyncio.AbstractEventLoopPolicy:
    """pytest-asyncio runs each async test on a uvloop loop."""
    return uvloop.EventLoopPolicy()


@pytest.fixture(autouse=True)
def _clear_collected() -> None:
    mechaway.testing.nodes.COLLECTED.clear()
