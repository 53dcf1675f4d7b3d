"""Fixtures for the core tests."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest_asyncio

import mechaway.testing.nodes  # noqa: F401  (CollectNode, PassNode, FailNode, CountNode)
from mechaway.runtime.engine import Engine
from mechaway.runtime.manager import FlowDirWatcher, FlowManager
from mechaway.store.db import Database
from mechaway.store.flows import FlowStore


@pytest_asyncio.fixture
async def engine() -> AsyncIterator[Engine]:
    """An engine with a short stop timeout, stopped (every flow) after the test."""
    e = Engine(stop_timeout=2.0)
    try:
        yield e
    finally:
        await e.stop()


@pytest_asyncio.fixture
async def watcher(tmp_path: Path) -> AsyncIterator[FlowDirWatcher]:
    """A flows-dir watcher on ``tmp_path/flows`` (scans only when the test asks)."""
    db = Database(tmp_path / "mechaway.db")
    db.open()
    engine = Engine(stop_timeout=2.0)
    flows = tmp_path / "flows"
    flows.mkdir()
    w = FlowDirWatcher(FlowManager(engine, FlowStore(db)), flows, interval=3600)
    try:
        yield w
    finally:
        await w.stop()
        await engine.stop()
        await db.close()
