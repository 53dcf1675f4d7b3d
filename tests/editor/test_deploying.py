"""Deploying from the browser: history and rollback, another deploy meanwhile (a file, the
API) answered 409 with review/overwrite/reload, deploy events from other tabs, and a
Node-RED flows.json imported, reviewed and deployed."""

from __future__ import annotations

import json
import os
from typing import Any

from playwright.sync_api import Browser, Page, expect

from mechaway.testing.daemon import DaemonProc

from .browser import open_editor
from .conftest import DATA, TOKEN
from .ui import deploy, node, select


def pipe(fid: str, interval: float, payload: Any) -> dict[str, Any]:
    return {
        "id": fid,
        "name": f"pipe {fid}",
        "nodes": [
            {
                "id": "tick",
                "type": "InjectNode",
                "params": {"interval": interval, "payload": payload},
            },
            {"id": "log", "type": "LogNode", "params": {"keep": 5}},
        ],
        "edges": [{"from": "tick", "to": "log"}],
    }


def put(daemon: DaemonProc, doc: dict[str, Any]) -> int:
    code, body = daemon.api("PUT", f"/flows/{doc['id']}", doc)
    assert code in (200, 201), body
    rev: int = body["rev"]
    return rev


def open_flow(browser: Browser, daemon: DaemonProc, fid: str) -> Page:
    page = open_editor(browser, f"{daemon.url}/#flow={fid}", TOKEN)
    expect(page.get_by_test_id("flow-source")).to_be_visible()
    return page


def write_file(daemon: DaemonProc, doc: dict[str, Any]) -> None:
    path = daemon.flows / f"{doc['id']}.json"
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(doc))
    os.replace(tmp, path)


def active_rev(daemon: DaemonProc, fid: str) -> int:
    rev: int = daemon.get(f"/flows/{fid}")["rev"]
    return rev


def test_history_lists_revisions_and_rolls_back(browser: Browser, daemon: DaemonProc) -> None:
    put(daemon, pipe("hist", 1.0, "first"))
    put(daemon, pipe("hist", 1.0, "second"))
    page = open_flow(browser, daemon, "hist")
    try:
        expect(page.get_by_test_id("flow-source")).to_contain_text("rev 2")
        page.get_by_test_id("history").click()
        expect(page.get_by_test_id("revision-2")).to_contain_text("active")
        page.get_by_test_id("rollback-1").click()
        expect(page.get_by_test_id("notice")).to_contain_text("rolled hist back to revision 1")
        flow = daemon.get("/flows/hist")
        assert flow["flow"]["nodes"][0]["params"]["payload"] == "first"
        # the editor shows what now runs
        expect(page.get_by_test_id("flow-source")).to_contain_text(f"rev {flow['rev']}")
        select(page, "tick")
        expect(page.get_by_test_id("param-payload")).to_have_value("first")
    finally:
        page.context.close()


def test_a_file_flow_changed_meanwhile_is_a_409_with_review_and_reload(
    browser: Browser, daemon: DaemonProc
) -> None:
    write_file(daemon, pipe("fromfile", 1.0, "v1"))
    daemon.wait(lambda: daemon.api("GET", "/flows/fromfile")[0] == 200, 10, "the file flow")
    page = open_flow(browser, daemon, "fromfile")
    try:
        expect(page.get_by_test_id("flow-source")).to_contain_text("from file")
        select(page, "tick")
        page.get_by_test_id("param-payload").fill("mine")

        rev = active_rev(daemon, "fromfile")
        write_file(daemon, pipe("fromfile", 1.0, "theirs"))
        daemon.wait(lambda: active_rev(daemon, "fromfile") > rev, 10, "the file's new revision")
        # the events socket tells this tab at once
        expect(page.get_by_test_id("remote-deploy")).to_contain_text(f"Revision {rev + 1}")

        deploy(page)
        dialog = page.get_by_test_id("conflict-dialog")
        expect(dialog).to_be_visible()
        # the file is the flow's one truth: the daemon refuses, saying so
        expect(page.get_by_test_id("conflict-message")).to_contain_text("comes from the file")
        expect(page.get_by_test_id("conflict-overwrite")).to_have_count(0)
        page.get_by_test_id("conflict-review").click()
        expect(dialog.get_by_test_id("diff-changed")).to_contain_text("tick (params.payload)")
        page.get_by_test_id("conflict-reload").click()
        expect(dialog).to_be_hidden()
        select(page, "tick")
        expect(page.get_by_test_id("param-payload")).to_have_value("theirs")
        assert daemon.get("/flows/fromfile")["flow"]["nodes"][0]["params"]["payload"] == "theirs"
    finally:
        page.context.close()


def test_another_tab_deployed_meanwhile_then_overwrite(
    browser: Browser, daemon: DaemonProc
) -> None:
    put(daemon, pipe("race", 1.0, "start"))
    page = open_flow(browser, daemon, "race")
    try:
        select(page, "tick")
        page.get_by_test_id("param-payload").fill("from the editor")
        other = put(daemon, pipe("race", 1.0, "from another tab"))
        expect(page.get_by_test_id("remote-deploy")).to_be_visible()
        deploy(page)
        expect(page.get_by_test_id("conflict-dialog")).to_be_visible()
        page.get_by_test_id("conflict-overwrite").click()
        expect(page.get_by_test_id("notice")).to_contain_text(f"as revision {other + 1}")
        got = daemon.get("/flows/race")["flow"]["nodes"][0]["params"]["payload"]
        assert got == "from the editor"
    finally:
        page.context.close()


def test_node_red_import_shows_the_report_and_opens_flows_for_review(page: Page) -> None:
    page.get_by_test_id("import-nodered").set_input_files(DATA / "greenhouse.json")
    dialog = page.get_by_test_id("import-dialog")
    expect(dialog).to_be_visible()
    items = page.get_by_test_id("import-report-item")
    # the JavaScript function and the JSONata expression are reported, not dropped
    expect(items.filter(has_text="JavaScript")).to_have_count(1)
    expect(items.filter(has_text="JSONata")).to_have_count(1)
    expect(page.get_by_test_id("import-config")).to_contain_text("[mqtt.local]")
    page.get_by_test_id("import-open-greenhouse").click()
    expect(dialog).to_be_hidden()
    nodes = page.locator(".react-flow__node")
    expect(nodes).to_have_count(7)
    # the function node came in disabled, its JavaScript kept for a person to port
    function = node(page, "0e1d2c3b4a596877")
    expect(function).to_contain_text("disabled")
    # the switch's two outputs are ports, wired as in Node-RED
    switch = node(page, "9a8b7c6d5e4f3a21")
    expect(switch.locator('[data-handleid="rule1"]')).to_be_visible()
    expect(page.locator(".react-flow__edge")).to_have_count(7)
    expect(page.get_by_test_id("dirty")).to_be_visible()


def test_node_red_import_of_two_tabs_then_deploy_one(page: Page, daemon: DaemonProc) -> None:
    page.get_by_test_id("import-nodered").set_input_files(DATA / "two_tabs.json")
    dialog = page.get_by_test_id("import-dialog")
    expect(dialog.locator('[data-testid^="import-open-"]')).to_have_count(2)
    # a dashboard gauge has no mechaway equivalent: named in the report
    expect(page.get_by_test_id("import-report-item").filter(has_text="ui_gauge")).to_have_count(1)
    assert daemon.api("GET", "/flows/line_1")[0] == 404  # the import deployed nothing
    page.get_by_test_id("import-open-line_1").click()
    # link out -> link in -> junction became direct wires: inject -> delay, debug
    expect(page.locator(".react-flow__node")).to_have_count(3)
    expect(page.locator(".react-flow__edge")).to_have_count(3)
    page.get_by_test_id("deploy").click()
    expect(page.get_by_test_id("diff-added")).to_contain_text("aa00000000000001")
    page.get_by_test_id("deploy-confirm").click()
    expect(page.get_by_test_id("notice")).to_contain_text("deployed line_1")
    stored = daemon.get("/flows/line_1")["flow"]
    assert len(stored["nodes"]) == 3
    # what the importer noted in ``ui`` survives the editor
    assert stored["nodes"][0]["ui"]["nodered"]["type"] == "inject"
