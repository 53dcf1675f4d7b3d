"""Fixtures of the hub tests: the hub database per backend (SQLite file, or a fresh
PostgreSQL database made for the test and dropped after it)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from .harness import pg_database


@pytest.fixture(params=["sqlite", "pg"])
def database(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    if request.param == "sqlite":
        yield str(tmp_path / "hub.db")
        return
    with pg_database() as dsn:
        yield dsn
