"""The suite runs on the daemon's event loop implementation."""

from __future__ import annotations

import asyncio

import pytest
import uvloop


@pytest.mark.asyncio
async def test_async_tests_run_on_uvloop() -> None:
    assert isinstance(asyncio.get_running_loop(), uvloop.Loop)
