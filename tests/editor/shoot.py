"""Screenshots of the editor's main views for docs/editor/ (a real daemon, real browser).

Run: .venv/bin/python tests/editor/shoot.py   (writes docs/editor/*.png)
"""

from __future__ import annotations

import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).parent))
from browser import launch, open_editor  # type: ignore[import-not-found]
from playwright.sync_api import Page, expect, sync_playwright
from ui import drop, node, select, wire  # type: ignore[import-not-found]

from mechaway.testing.daemon import DaemonProc

OUT = Path(__file__).resolve().parents[2] / "docs" / "editor"
DATA = Path(__file__).with_name("data")
TOKEN = "screenshot-token"

GREENHOUSE: dict[str, Any] = {
    "id": "greenhouse",
    "name": "Greenhouse climate",
    "nodes": [
        {"id": "tick", "type": "InjectNode", "params": {"interval": 0.2, "payload": 23.5,
         "topic": "gh/temp"}, "ui": {"x": 40, "y": 120}},
        {"id": "route", "type": "RouteNode", "params": {"rules": [
            {"port": "hot", "op": "gt", "value": 25}, {"port": "ok", "op": "else"}]},
         "ui": {"x": 300, "y": 120}},
        {"id": "alert", "type": "ChangeNode", "params": {"rules": [
            {"op": "set", "path": "topic", "value": "alerts/hot"}]}, "ui": {"x": 560, "y": 40}},
        {"id": "window", "type": "WindowNode", "params": {"size": 10, "op": "mean"},
         "ui": {"x": 560, "y": 220}},
        {"id": "log", "type": "LogNode", "params": {"keep": 10}, "ui": {"x": 820, "y": 220}},
        {"id": "store", "type": "StoreNode", "params": {"series": "gh.temp"},
         "ui": {"x": 820, "y": 40}},
    ],
    "edges": [
        {"from": "tick", "to": "route"},
        {"from": "route", "to": "alert", "port": "hot"},
        {"from": "route", "to": "window", "port": "ok"},
        {"from": "alert", "to": "store"},
        {"from": "window", "to": "log"},
        {"from": "route", "to": "log", "port": "error"},
    ],
}  # fmt: skip


def shot(page: Page, name: str) -> None:
    page.wait_for_timeout(400)
    page.screenshot(path=str(OUT / f"{name}.png"))
    print("wrote", OUT / f"{name}.png")


def main() -> None:
    OUT.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        d = DaemonProc(Path(tmp), token=TOKEN)
        d.start()
        try:
            code, body = d.api("PUT", "/flows/greenhouse", GREENHOUSE)
            assert code in (200, 201), body
            with sync_playwright() as pw:
                browser = launch(pw)
                page = open_editor(browser, f"{d.url}/", None)
                page.get_by_test_id("token").fill(TOKEN)
                shot(page, "login")
                page.get_by_test_id("login").click()
                expect(node(page, "tick")).to_be_visible()
                time.sleep(2.5)  # counters and debug messages accumulate
                shot(page, "canvas")

                select(page, "route")
                shot(page, "properties")

                # a new flow being drawn: a validation error on the node
                page.get_by_test_id("new-flow").click()
                drop(page, "InjectNode", 120, 140)
                drop(page, "FunLogicNode", 420, 140)
                wire(page, "inject1", "out", "funlogic1")
                select(page, "funlogic1")
                page.get_by_test_id("param-script").locator(".cm-content").click()
                page.keyboard.type("local t = msg.payload\nif t > 25 then\n  return = msg\nend\n")
                expect(page.get_by_test_id("lua-error")).to_be_visible()
                shot(page, "validation")

                page.get_by_test_id("flow-select").select_option("greenhouse")
                expect(node(page, "tick")).to_be_visible()
                select(page, "window")
                page.get_by_test_id("param-size").fill("20")
                box = node(page, "store").bounding_box()
                assert box is not None
                page.mouse.move(box["x"] + 30, box["y"] + 10)
                page.mouse.down()
                page.mouse.move(box["x"] + 30, box["y"] - 60, steps=10)
                page.mouse.up()
                page.get_by_test_id("deploy").click()
                expect(page.get_by_test_id("deploy-dialog")).to_be_visible()
                shot(page, "deploy-diff")
                page.get_by_test_id("deploy-confirm").click()
                expect(page.get_by_test_id("notice")).to_contain_text("deployed")

                page.get_by_test_id("history").click()
                expect(page.get_by_test_id("revision-1")).to_be_visible()
                shot(page, "history")
                page.keyboard.press("Escape")
                expect(page.get_by_test_id("history-dialog")).to_be_hidden()

                select(page, "tick")
                page.get_by_test_id("param-payload").fill("30")
                doc = json.loads(json.dumps(GREENHOUSE))
                doc["nodes"][0]["params"]["payload"] = 19
                d.api("PUT", "/flows/greenhouse", doc)
                page.get_by_test_id("deploy").click()
                page.get_by_test_id("deploy-confirm").click()
                page.get_by_test_id("conflict-review").click()
                expect(page.get_by_test_id("diff")).to_be_visible()
                shot(page, "conflict")
                page.get_by_test_id("conflict-reload").click()

                page.get_by_test_id("import-nodered").set_input_files(DATA / "greenhouse.json")
                expect(page.get_by_test_id("import-dialog")).to_be_visible()
                shot(page, "import-report")
                page.locator('[data-testid^="import-open-"]').first.click()
                expect(page.locator(".react-flow__node").first).to_be_visible()
                shot(page, "import-opened")
                browser.close()
        finally:
            d.kill()


if __name__ == "__main__":
    main()
