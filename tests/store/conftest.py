"""Fixtures for the store tests: an open ``Database`` in a temp dir, an engine wired to it."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest_asyncio

import mechaway.testing.nodes  # noqa: F401  (CollectNode)
from mechaway.nodes.context import Services
from mechaway.runtime.engine import Engine
from mechaway.store.db import Database


@pytest_asyncio.fixture
async def db(tmp_path: Path) -> AsyncIterator[Database]:
    """An open store (short group-commit window: tests await many single commits)."""
    d = Database(tmp_path / "mechaway.db", commit_interval=0.002)
    d.open()
    try:
        yield d
    finally:
        await d.close()


@pytest_asyncio.fixture
async def engine(db: Database) -> AsyncIterator[Engine]:
    """An engine whose nodes use ``db``; every flow stopped after the test."""
    e = Engine(Services(device_id="test", data_dir=db.path.parent, store=db), stop_timeout=5.0)
    try:
        yield e
    finally:
        await e.stop()
