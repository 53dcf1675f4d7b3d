"""A fresh database of the machine's PostgreSQL per test (see pg_server.py)."""

from __future__ import annotations

import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest_asyncio

sys.path.insert(0, str(Path(__file__).resolve().parent))
from pg_server import fresh_database


@pytest_asyncio.fixture
async def dsn() -> AsyncIterator[str]:
    async with fresh_database() as d:
        yield d
