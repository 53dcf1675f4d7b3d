"""The flows directory watcher in-process: the same path as the daemon, without a subprocess."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, ClassVar

import pytest

from mechaway.nodes.base import SourceNode
from mechaway.nodes.registry import register_node
from mechaway.runtime.manager import FlowDirWatcher
from mechaway.testing.flows import IDLE_SOURCE, doc, edge, node

pytestmark = pytest.mark.asyncio


@register_node("CoreTestFlakyDeviceNode")
class FlakyDeviceNode(SourceNode):
    """A source whose device is missing until a test plugs it in."""

    plugged: ClassVar[bool] = False

    async def start(self) -> None:
        if not FlakyDeviceNode.plugged:
            raise RuntimeError("device not found")


def flow(fid: str, keep: int = 20) -> dict[str, Any]:
    return doc(fid, [IDLE_SOURCE, node("log", "LogNode", keep=keep)], [edge("src", "log")])


def put(path: Path, data: Any) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(data if isinstance(data, str) else json.dumps(data))
    os.replace(tmp, path)


def running(w: FlowDirWatcher) -> dict[str, int]:
    return {fid: rf.rev for fid, rf in w.manager.engine.flows.items()}


async def test_files_are_deployed_changed_and_removed(watcher: FlowDirWatcher) -> None:
    d = watcher.directory
    put(d / "a.json", flow("a"))
    put(d / "b.yml", "id: b\nnodes: [{id: s, type: InjectNode, params: {once: true}}]\n")
    (d / "notes.txt").write_text("not a flow")
    (d / ".hidden.json").write_text("{")
    await watcher.start()
    assert running(watcher) == {"a": 1, "b": 1}
    assert watcher.errors() == {}
    hist = watcher.manager.store.history("a")
    assert [(r.rev, r.source) for r in hist] == [(1, "file")]

    put(d / "a.json", flow("a", keep=2))
    await watcher.scan()
    assert running(watcher) == {"a": 2, "b": 1}

    (d / "b.yml").unlink()
    await watcher.scan()
    assert running(watcher) == {"a": 2}
    assert watcher.manager.store.active_rev("b") is None


async def test_rewriting_identical_content_is_not_a_new_revision(watcher: FlowDirWatcher) -> None:
    path = watcher.directory / "a.json"
    put(path, flow("a"))
    await watcher.start()
    put(path, flow("a"))  # new mtime, same bytes
    await watcher.scan(force=True)
    assert [r.rev for r in watcher.manager.store.history("a")] == [1]


async def test_an_invalid_file_is_reported_and_the_running_revision_kept(
    watcher: FlowDirWatcher,
) -> None:
    path = watcher.directory / "a.json"
    put(path, flow("a"))
    await watcher.start()
    bad = flow("a")
    bad["nodes"][1]["params"] = {"keep": -1}
    put(path, bad)
    await watcher.scan()
    assert running(watcher) == {"a": 1}
    assert watcher.errors() == {
        str(path): f"{path}: nodes[1] (log).params.keep: expected `int` >= 0"
    }
    put(path, flow("a", keep=1))
    await watcher.scan()
    assert running(watcher) == {"a": 2}
    assert watcher.errors() == {}


async def test_changing_the_flow_id_in_a_file_retires_the_old_flow(
    watcher: FlowDirWatcher,
) -> None:
    path = watcher.directory / "a.json"
    put(path, flow("old"))
    await watcher.start()
    assert running(watcher) == {"old": 1}
    put(path, flow("new"))
    await watcher.scan()
    # the file no longer defines "old": it must not keep running (nor come back at boot)
    assert running(watcher) == {"new": 1}
    assert watcher.manager.store.active_rev("old") is None


async def test_a_flow_id_shared_by_another_file_is_kept(watcher: FlowDirWatcher) -> None:
    put(watcher.directory / "a.json", flow("x"))
    put(watcher.directory / "b.json", flow("y"))
    await watcher.start()
    put(watcher.directory / "b.json", flow("x", keep=3))  # b now also defines x
    await watcher.scan()
    assert set(running(watcher)) == {"x"}  # x stays (a.json), y is retired (no file has it)


async def test_a_forced_scan_retries_a_file_whose_deploy_failed(watcher: FlowDirWatcher) -> None:
    path = watcher.directory / "dev.json"
    raw = doc(
        "dev", [node("d", "CoreTestFlakyDeviceNode"), node("log", "LogNode")], [edge("d", "log")]
    )
    put(path, raw)
    FlakyDeviceNode.plugged = False
    try:
        await watcher.start()
        assert running(watcher) == {}
        assert "device not found" in watcher.errors()[str(path)]
        await watcher.scan()  # nothing changed on disk: no retry on the regular poll
        FlakyDeviceNode.plugged = True
        await watcher.scan(force=True)  # SIGHUP: the operator fixed the cause, try again
        assert running(watcher) == {"dev": 1}
        assert watcher.errors() == {}
    finally:
        FlakyDeviceNode.plugged = False


async def test_a_missing_directory_is_not_fatal(tmp_path: Path, watcher: FlowDirWatcher) -> None:
    w = FlowDirWatcher(watcher.manager, tmp_path / "nope")
    await w.scan()
    assert w.errors() == {}


async def test_a_rejected_file_says_what_runs_instead(
    watcher: FlowDirWatcher, caplog: pytest.LogCaptureFixture
) -> None:
    d = watcher.directory
    put(d / "a.json", {**flow("a"), "nodes": "none"})
    await watcher.start()  # first start: nothing of it runs, and the log says so
    assert "flow file rejected, flow a does not run" in caplog.text
    assert "keeps running" not in caplog.text
    put(d / "a.json", flow("a"))
    await watcher.scan()
    caplog.clear()
    put(d / "a.json", {**flow("a"), "edges": 5})
    await watcher.scan()
    assert "flow file rejected, flow a rev 1 keeps running" in caplog.text
