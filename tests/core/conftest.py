"""Fixtures for the core tests."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest_asyncio

import mechaway.testing.nodes  # noqa: F401  (CollectNode, PassNode, FailNode, CountNode)
from mechaway.runtime.engine import Engine


@pytest_asyncio.fixture
async def engine() -> AsyncIterator[Engine]:
    """An engine with a short stop timeout, stopped (every flow) after the test."""
    e = Engine(stop_timeout=2.0)
    try:
        yield e
    finally:
        await e.stop()
