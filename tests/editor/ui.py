"""What a person does in the editor, as Playwright steps."""

from __future__ import annotations

from playwright.sync_api import Page, expect


def node(page: Page, nid: str):  # type: ignore[no-untyped-def]
    return page.locator(f'.react-flow__node[data-id="{nid}"]')


def drop(page: Page, node_type: str, x: int, y: int) -> None:
    """Drag a node type from the palette onto the canvas at (x, y) of the canvas."""
    page.get_by_test_id(f"palette-{node_type}").drag_to(
        page.get_by_test_id("canvas"), target_position={"x": x, "y": y}
    )


def wire(page: Page, src: str, port: str, dst: str) -> None:
    """Draw a wire from ``src``'s ``port`` handle to ``dst``'s input, with the mouse."""
    a = node(page, src).locator(f'[data-handleid="{port}"]').bounding_box()
    b = node(page, dst).locator('[data-handleid="in"]').bounding_box()
    assert a is not None and b is not None
    page.mouse.move(a["x"] + a["width"] / 2, a["y"] + a["height"] / 2)
    page.mouse.down()
    page.mouse.move(b["x"] + b["width"] / 2, b["y"] + b["height"] / 2, steps=12)
    page.mouse.up()


def select(page: Page, nid: str) -> None:
    node(page, nid).locator("div").first.click(position={"x": 20, "y": 10})
    expect(page.get_by_test_id("node-id")).to_have_value(nid)


def deploy(page: Page) -> None:
    page.get_by_test_id("deploy").click()
    page.get_by_test_id("deploy-confirm").click()


def counter_out(page: Page, nid: str) -> int:
    text = page.get_by_test_id(f"node-counter-{nid}").inner_text()
    if "out" not in text:
        return -1
    return int(text.split("out")[1].split("·")[0].strip())
