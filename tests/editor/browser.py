"""Debian's Chromium driven by Playwright, and a daemon for it (tests and the benchmark).

Never ``playwright install``: the browser is ``/usr/bin/chromium`` (``apt-get install
chromium``), launched headless with the network chatter of a desktop browser turned off.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from playwright.sync_api import Browser, Page, Playwright

CHROMIUM = os.environ.get("MECHAWAY_TEST_CHROMIUM", "/usr/bin/chromium")
ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


def launch(pw: Playwright) -> Browser:
    if not Path(CHROMIUM).exists():
        raise AssertionError(f"{CHROMIUM} not found: `apt-get install -y chromium`")
    return pw.chromium.launch(executable_path=CHROMIUM, args=ARGS, headless=True)


def open_editor(browser: Browser, url: str, token: str | None, **ctx: Any) -> Page:
    """A fresh tab on the editor; with ``token`` it is logged in already (sessionStorage)."""
    context = browser.new_context(viewport={"width": 1400, "height": 860}, **ctx)
    if token is not None:
        context.add_init_script(f"sessionStorage.setItem('mechaway.token', {token!r})")
    page = context.new_page()
    page.goto(url)
    return page
