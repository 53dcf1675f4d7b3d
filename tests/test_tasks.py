"""OwnedTask: a background task that dies says so when it dies."""

from __future__ import annotations

import asyncio
import logging

import pytest

from mechaway.tasks import OwnedTask


@pytest.mark.asyncio
async def test_a_dying_task_is_logged_at_once_and_stop_stays_quiet(
    caplog: pytest.LogCaptureFixture,
) -> None:
    task = OwnedTask("mechaway.inject[f.tick]")

    async def run() -> None:
        await asyncio.sleep(0)
        raise RuntimeError("schedule exhausted")

    with caplog.at_level(logging.ERROR, "mechaway.tasks"):
        task.start(run)
        for _ in range(10):
            await asyncio.sleep(0)
        # before: nothing until stop(), which then raised the error into the caller
        assert not task.running
        assert "mechaway.inject[f.tick] stopped: RuntimeError: schedule exhausted" in caplog.text
        await task.stop()
        await task.stop()


@pytest.mark.asyncio
async def test_a_cancelled_task_is_not_an_error(caplog: pytest.LogCaptureFixture) -> None:
    task = OwnedTask("quiet")
    task.start(lambda: asyncio.sleep(3600))
    await asyncio.sleep(0)
    with caplog.at_level(logging.ERROR, "mechaway.tasks"):
        await task.stop()
    assert caplog.text == ""
