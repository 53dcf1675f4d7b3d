"""A person in the browser: log in, draw a flow, configure it, see validation, deploy it,
watch it run; undo/redo, copy/paste, delete; a Lua error shown at its line."""

from __future__ import annotations

import time

from playwright.sync_api import Browser, Page, expect

from mechaway.testing.daemon import DaemonProc

from .browser import open_editor
from .conftest import TOKEN
from .ui import counter_out, drop, node, select, wire


def test_login_asks_for_the_token_and_keeps_it_for_the_tab_only(
    browser: Browser, daemon: DaemonProc
) -> None:
    page = open_editor(browser, f"{daemon.url}/", None)
    try:
        page.get_by_test_id("token").fill("not-the-token")
        page.get_by_test_id("login").click()
        expect(page.get_by_test_id("login-error")).to_have_text("wrong token")
        page.get_by_test_id("token").fill(TOKEN)
        page.get_by_test_id("login").click()
        expect(page.get_by_test_id("deploy")).to_be_visible()
        assert page.evaluate("sessionStorage.getItem('mechaway.token')") == TOKEN
        assert page.evaluate("localStorage.length") == 0
        page.reload()  # the same tab keeps it
        expect(page.get_by_test_id("deploy")).to_be_visible()
    finally:
        page.context.close()
    other = open_editor(browser, f"{daemon.url}/", None)  # another tab asks again
    try:
        expect(other.get_by_test_id("token")).to_be_visible()
    finally:
        other.context.close()


def test_draw_wire_configure_validate_deploy_and_watch_counters(
    page: Page, daemon: DaemonProc
) -> None:
    page.get_by_test_id("new-flow").click()
    page.get_by_test_id("flow-id").fill("drawn")
    drop(page, "InjectNode", 120, 120)
    drop(page, "ChangeNode", 420, 160)
    drop(page, "LogNode", 720, 200)
    for nid in ("inject1", "change1", "log1"):
        expect(node(page, nid)).to_be_visible()

    # the server's validation names the ChangeNode's missing rules, on that node
    expect(node(page, "change1").get_by_test_id("validation-error")).to_contain_text("rules")

    wire(page, "inject1", "out", "change1")
    wire(page, "change1", "out", "log1")
    expect(page.locator(".react-flow__edge")).to_have_count(2)
    # a wire that would close a loop is refused as it is drawn
    wire(page, "log1", "error", "change1")
    expect(page.get_by_test_id("notice")).to_contain_text("cycle")
    expect(page.locator(".react-flow__edge")).to_have_count(2)

    select(page, "inject1")
    page.get_by_test_id("param-interval").fill("-1")
    expect(node(page, "inject1").get_by_test_id("validation-error")).to_contain_text("> 0")
    page.get_by_test_id("param-interval").fill("0.05")
    page.get_by_test_id("param-payload").fill("21")
    expect(node(page, "inject1").get_by_test_id("validation-error")).to_have_count(0)

    select(page, "change1")
    page.get_by_test_id("param-rules.add").click()
    page.get_by_test_id("param-rules.0.op").select_option(label="set")
    page.get_by_test_id("param-rules.0.path").fill("payload")
    page.get_by_test_id("param-rules.0.value").fill("42")
    expect(node(page, "change1").get_by_test_id("validation-error")).to_have_count(0)
    expect(page.get_by_test_id("validity")).to_have_text("✓ valid")

    page.get_by_test_id("deploy").click()
    expect(page.get_by_test_id("diff-added")).to_contain_text("inject1, change1, log1")
    page.get_by_test_id("deploy-confirm").click()
    expect(page.get_by_test_id("notice")).to_contain_text("deployed drawn as revision 1")

    stored = daemon.get("/flows/drawn")["flow"]
    params = {n["id"]: n["params"] for n in stored["nodes"]}
    assert params["inject1"] == {"interval": 0.05, "payload": 21}
    assert params["change1"] == {"rules": [{"op": "set", "path": "payload", "value": 42}]}
    assert all(set(n["ui"]) == {"x", "y"} for n in stored["nodes"])
    assert {(e["from"], e["to"]) for e in stored["edges"]} == {
        ("inject1", "change1"),
        ("change1", "log1"),
    }

    # live counters move on the nodes as messages flow
    expect(page.get_by_test_id("node-counter-log1")).to_contain_text("in ")
    first = counter_out(page, "inject1")
    deadline = time.monotonic() + 10
    while counter_out(page, "inject1") < first + 5:
        assert time.monotonic() < deadline, "the inject node's counter did not move"
        page.wait_for_timeout(100)
    # the LogNode's messages reach the debug panel
    expect(page.get_by_test_id("debug-entry").first).to_contain_text("drawn/log1")
    expect(page.get_by_test_id("debug-entry").first).to_contain_text("42")


def test_undo_redo_copy_paste_and_keyboard_delete(page: Page) -> None:
    page.get_by_test_id("new-flow").click()
    drop(page, "InjectNode", 150, 150)
    drop(page, "LogNode", 450, 150)
    wire(page, "inject1", "out", "log1")
    nodes, edges = page.locator(".react-flow__node"), page.locator(".react-flow__edge")
    expect(edges).to_have_count(1)

    # select both (ctrl-click), copy, paste: two new nodes and their wire
    select(page, "inject1")
    node(page, "log1").click(modifiers=["Control"], position={"x": 20, "y": 10})
    page.keyboard.press("Control+c")
    page.keyboard.press("Control+v")
    expect(nodes).to_have_count(4)
    expect(edges).to_have_count(2)
    expect(node(page, "inject2")).to_be_visible()

    # Delete removes the pasted (selected) pair; undo brings it back, redo removes again
    page.keyboard.press("Delete")
    expect(nodes).to_have_count(2)
    page.keyboard.press("Control+z")
    expect(nodes).to_have_count(4)
    expect(edges).to_have_count(2)
    page.keyboard.press("Control+Shift+z")
    expect(nodes).to_have_count(2)
    page.keyboard.press("Control+z")  # back to 4
    page.keyboard.press("Control+z")  # undo the paste
    page.keyboard.press("Control+z")  # undo the wire
    expect(nodes).to_have_count(2)
    expect(edges).to_have_count(0)


def test_lua_script_error_is_shown_at_its_line(page: Page) -> None:
    page.get_by_test_id("new-flow").click()
    drop(page, "FunLogicNode", 300, 150)
    select(page, "funlogic1")
    editor = page.get_by_test_id("param-script").locator(".cm-content")
    editor.click()
    page.keyboard.type("local x = 1\nif x then\n  return = msg\nend\n")
    expect(page.get_by_test_id("lua-error")).to_contain_text("line 3")
    expect(page.locator(".cm-lintRange-error")).to_have_count(1)
    expect(node(page, "funlogic1").get_by_test_id("validation-error")).to_contain_text("script")
    # fixed: the error goes away
    page.keyboard.press("Control+a")
    page.keyboard.type("return msg")
    expect(page.get_by_test_id("lua-error")).to_have_count(0)
    expect(node(page, "funlogic1").get_by_test_id("validation-error")).to_have_count(0)
