"""Plugins: entry-point node types and WASM node packs dropped into <data_dir>/plugins."""

from __future__ import annotations

import pathlib
import shutil
from typing import Any

import orjson
import pytest

from mechaway.errors import FlowError
from mechaway.flow.validate import validate
from mechaway.nodes import plugins
from mechaway.nodes.context import Services
from mechaway.nodes.registry import get_node_type, params_schema
from mechaway.runtime.engine import Engine
from mechaway.testing.nodes import COLLECTED


def flow(node_type: str, params: dict[str, Any]) -> dict[str, Any]:
    return {
        "id": "p",
        "nodes": [
            {"id": "src", "type": "InjectNode", "params": {"once": True, "once_delay": 3600}},
            {"id": "x", "type": node_type, "params": params},
            {"id": "sink", "type": "CollectNode"},
        ],
        "edges": [{"from": "src", "to": "x"}, {"from": "x", "to": "sink"}],
    }


async def run_one(engine: Engine, doc: dict[str, Any], msg: dict[str, Any]) -> list[Any]:
    await engine.deploy(validate(doc))
    engine.inject("p", "x", msg)
    sink = engine.flows["p"].sinks["sink"]
    await sink.idle.wait()
    return COLLECTED["p.sink"]


def test_entry_point_plugin_is_discovered_and_broken_one_reported() -> None:
    reports = {r.name: r for r in plugins.load_entry_points()}
    assert reports["example"].types == ("ScaleNode",)
    assert reports["example"].error == ""
    assert reports["broken"].types == ()
    assert "broken on purpose" in reports["broken"].error
    cls = get_node_type("ScaleNode")
    assert cls is not None and cls.__module__ == "mechaway_example_plugin.nodes"
    schema = params_schema("ScaleNode")
    assert set(schema["$defs"]["ScaleParams"]["properties"]) == {"factor", "offset"}
    # the plugin's params follow the same strict rules as built-ins
    with pytest.raises(FlowError, match=r"params: unknown key `gain`"):
        validate(flow("ScaleNode", {"gain": 2}))
    # and the built-ins still work after a broken plugin
    assert get_node_type("RouteNode") is not None


@pytest.mark.asyncio
async def test_entry_point_node_runs_in_a_flow() -> None:
    plugins.load_entry_points()
    engine = Engine()
    got = await run_one(engine, flow("ScaleNode", {"factor": 2, "offset": 1}), {"payload": 20})
    assert [m["payload"] for m in got] == [41]
    await engine.stop()


def write_pack(plugdir: pathlib.Path, name: str, wasm: pathlib.Path, manifest: Any) -> None:
    plugdir.mkdir(parents=True, exist_ok=True)
    shutil.copy(wasm, plugdir / f"{name}.wasm")
    (plugdir / f"{name}.json").write_bytes(orjson.dumps(manifest))


@pytest.mark.asyncio
async def test_wasm_pack_is_picked_up_used_and_removed(
    tmp_path: pathlib.Path, c_wasm: pathlib.Path
) -> None:
    plugdir = tmp_path / "plugins"
    watcher = plugins.PackWatcher(plugdir)
    assert watcher.scan() == []
    write_pack(plugdir, "thresh", c_wasm, {
        "type": "ThresholdPackNode",
        "description": "temp above a threshold -> on/off",
        "params": {"type": "object",
                   "properties": {"threshold": {"type": "number", "default": 30}}},
    })  # fmt: skip
    (report,) = watcher.scan()
    assert report.types == ("ThresholdPackNode",) and report.error == ""
    schema = params_schema("ThresholdPackNode")
    assert schema["description"] == "temp above a threshold -> on/off"

    engine = Engine(Services(data_dir=tmp_path))
    msg = {"payload": {"temp": 25.0}, "topic": "t", "seq": 1}
    got = await run_one(engine, flow("ThresholdPackNode", {"threshold": 20}), msg)
    assert got[0]["payload"] == "on" and got[0]["seq"] == 1  # 25 > 20: the param reached init
    with pytest.raises(FlowError, match="threshold"):
        validate(flow("ThresholdPackNode", {"threshold": "high"}))
    await engine.stop()

    (plugdir / "thresh.json").unlink()
    assert watcher.scan() == []
    assert get_node_type("ThresholdPackNode") is None


def test_broken_pack_is_reported_and_skipped(tmp_path: pathlib.Path, c_wasm: pathlib.Path) -> None:
    plugdir = tmp_path / "plugins"
    plugdir.mkdir()
    (plugdir / "nomodule.json").write_text('{"type": "NoModuleNode"}')
    (plugdir / "garbage.json").write_text("{not json")
    write_pack(plugdir, "badtype", c_wasm, {"type": "Bad Name"})
    write_pack(plugdir, "clash", c_wasm, {"type": "RouteNode"})
    write_pack(plugdir, "badschema", c_wasm, {"type": "BadSchemaNode",
               "params": {"properties": {"x": {"type": "complex"}}}})  # fmt: skip
    reports = {r.name: r for r in plugins.PackWatcher(plugdir).scan()}
    assert "missing" in reports["nomodule"].error
    assert "cannot read manifest" in reports["garbage"].error
    assert "identifier" in reports["badtype"].error
    assert "already provided" in reports["clash"].error
    assert "params.properties.x.type" in reports["badschema"].error
    assert all(not r.types for r in reports.values())
    assert get_node_type("RouteNode").__module__ == "mechaway.nodes.transform"  # type: ignore[union-attr]


def test_daemon_picks_up_a_pack_without_restart_and_lists_plugins(
    tmp_path: pathlib.Path, c_wasm: pathlib.Path
) -> None:
    from mechaway.testing.daemon import DaemonProc

    daemon = DaemonProc(tmp_path)
    daemon.start()
    try:
        write_pack(daemon.data / "plugins", "thresh", c_wasm, {"type": "LivePackNode"})
        doc = flow("LivePackNode", {})
        doc["nodes"][0]["params"] = {"interval": 0.05, "payload": {"temp": 35.0}}
        doc["nodes"][2] = {"id": "sink", "type": "LogNode", "params": {"keep": 3}}

        def deployed() -> bool:
            code, _ = daemon.api("PUT", "/flows/p", doc)
            return bool(code in (200, 201))

        daemon.wait(deployed, 15, "the pack's node type to be usable")  # no restart
        daemon.wait(lambda: (daemon.flow_status("p") or {}).get("nodes", {}).get("sink", {})
                    .get("recent") == ["on"] * 3, 10, "the pack node to run")  # fmt: skip
        out = daemon.cli("plugins", "list")
        assert out.returncode == 0, out.stderr
        lines = out.stdout.splitlines()
        assert any(ln.startswith("thresh") and "LivePackNode" in ln for ln in lines), lines
        assert any(ln.startswith("example") and "ScaleNode" in ln for ln in lines), lines
        assert any(ln.startswith("broken") and "skipped: RuntimeError" in ln for ln in lines)
    finally:
        assert daemon.terminate() == 0
