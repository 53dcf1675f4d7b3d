"""A real daemon with a token, and Debian's Chromium driven by Playwright (sync API)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from playwright.sync_api import Browser, Page, expect, sync_playwright

from mechaway.testing.daemon import DaemonProc

from .browser import launch, open_editor

TOKEN = "editor-test-token"
# the machine running these may be busy (2 cores shared): waits are generous, never sleeps
expect.set_options(timeout=15_000)


@pytest.fixture(scope="module")
def daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DaemonProc]:
    d = DaemonProc(tmp_path_factory.mktemp("editor"), token=TOKEN)
    d.start()
    try:
        yield d
    finally:
        d.kill()


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    # module, not session: Playwright's sync API keeps an event loop running on the main
    # thread while it is open, and every asyncio test after it would find that loop
    # ("Runner.run() cannot be called from a running event loop")
    with sync_playwright() as pw:
        b = launch(pw)
        try:
            yield b
        finally:
            b.close()


@pytest.fixture
def page(browser: Browser, daemon: DaemonProc) -> Iterator[Page]:
    """A logged-in editor tab (the token put in sessionStorage as the login form does)."""
    p = open_editor(browser, f"{daemon.url}/", TOKEN)
    errors: list[str] = []
    p.on("pageerror", lambda e: errors.append(str(e)))
    p.get_by_test_id("deploy").wait_for()
    try:
        yield p
    finally:
        p.context.close()
    assert not errors, f"uncaught errors in the page: {errors}"


DATA = Path(__file__).with_name("data")
