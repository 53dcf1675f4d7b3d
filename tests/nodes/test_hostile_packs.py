"""WASM node packs and compiled-module caches that are hostile or broken.

Every bad pack is one report whose error names the key or the file; nothing hangs, reads
without bound, or reaches the registry half-checked; good packs and the flows that use
them carry on. The modules are built like the suite's others (wasmtime's wat2wasm, and
the clang-built C example through the conftest fixtures).
"""

from __future__ import annotations

import os
import pathlib
import re
import shutil
import threading
from collections.abc import Iterator
from typing import Any

import orjson
import pytest
import wasmtime

from mechaway.errors import FlowError
from mechaway.flow.validate import validate
from mechaway.logic.wasm import MAX_MODULE_BYTES, WasmLoadError, WasmSandbox
from mechaway.nodes import plugins, registry
from mechaway.nodes.context import Services
from mechaway.nodes.registry import (
    PluginReport,
    get_node_type,
    node_types,
    origin,
    params_schema,
    unregister_node,
)
from mechaway.runtime.engine import Engine
from mechaway.testing.nodes import COLLECTED

MSG: dict[str, Any] = {"topic": "t", "seq": 1, "payload": {"temp": 25.0}}

MEMORY = '(memory (export "memory") 1)'
ALLOC = '(func (export "alloc") (param i32) (result i32) (i32.const 1024))'
PROCESS = '(func (export "process") (param i32 i32) (result i64) (i64.const 0))'
# echoes its input; "init" accepts any params
ECHO = f"""(module {MEMORY} {ALLOC}
  (func (export "init") (param i32 i32) (result i64) (i64.const 0))
  (func (export "process") (param $p i32) (param $n i32) (result i64)
    (i64.or (i64.shl (i64.extend_i32_u (local.get $p)) (i64.const 32))
            (i64.extend_i32_u (local.get $n)))))"""


def wat(body: str) -> bytes:
    return bytes(wasmtime.wat2wasm(f"(module {body})"))


@pytest.fixture
def plugdir(tmp_path: pathlib.Path) -> Iterator[pathlib.Path]:
    d = tmp_path / "plugins"
    d.mkdir()
    yield d
    # leave the process-wide registry as it was
    for name in node_types():
        if origin(name).startswith(f"wasm pack {d}"):
            unregister_node(name)


def write(plugdir: pathlib.Path, name: str, manifest: Any, module: bytes | None = None) -> None:
    data = manifest if isinstance(manifest, bytes) else orjson.dumps(manifest)
    (plugdir / f"{name}.json").write_bytes(data)
    if module is not None:
        (plugdir / f"{name}.wasm").write_bytes(module)


def scan(watcher: plugins.PackWatcher) -> dict[str, PluginReport]:
    """One scan in a thread, so a reader that blocks fails the test instead of hanging it."""
    out: list[list[PluginReport]] = []
    t = threading.Thread(target=lambda: out.append(watcher.scan()), daemon=True)
    t.start()
    t.join(120)
    assert out, "the scan never returned (blocked on a file?)"
    return {r.name: r for r in out[0]}


def flow(node_type: str, params: dict[str, Any], fid: str = "p") -> dict[str, Any]:
    return {
        "id": fid,
        "nodes": [
            {"id": "src", "type": "InjectNode", "params": {"once": True, "once_delay": 3600}},
            {"id": "x", "type": node_type, "params": params},
            {"id": "sink", "type": "CollectNode"},
        ],
        "edges": [{"from": "src", "to": "x"}, {"from": "x", "to": "sink"}],
    }


async def send(engine: Engine, fid: str, msg: dict[str, Any]) -> list[Any]:
    sink = engine.flows[fid].sinks["sink"]
    engine.inject(fid, "x", msg)
    await sink.idle.wait()
    return COLLECTED[f"{fid}.sink"]


# --- manifests ------------------------------------------------------------------------------


def props(**spec: Any) -> dict[str, Any]:
    return {"type": "object", "properties": spec}


def nested_items(depth: int) -> dict[str, Any]:
    spec: dict[str, Any] = {"type": "array"}
    for _ in range(depth):
        spec = {"type": "array", "items": spec}
    return spec


HOSTILE_MANIFESTS: list[tuple[str, Any, str]] = [
    ("notobject", [1, 2], r"^ManifestError: manifest must be a JSON object$"),
    ("notjson", b"\xff\xfe{", r"cannot read manifest: not JSON"),
    ("deep", b"[" * 100_000 + b"]" * 100_000, r"cannot read manifest: not JSON"),
    (
        "huge",
        b'{"type": "HugeNode", "description": "' + b"x" * (3 << 20) + b'"}',
        r"cannot read manifest: \d+ bytes, more than the limit of 262144$",
    ),
    (
        "paramslist",
        {"type": "PlNode", "params": [1]},
        r"manifest\.params: Expected `object`, got `array`$",
    ),
    ("fuelstr", {"type": "FsNode", "fuel": "lots"}, r"manifest\.fuel: Expected `int`, got `str`$"),
    ("fuelneg", {"type": "FnNode", "fuel": -5}, r"manifest\.fuel: Expected `int` >= 1000$"),
    ("fuelhuge", {"type": "FhNode", "fuel": 10**15}, r"manifest\.fuel: .* <= 1000000000$"),
    ("memhuge", {"type": "MhNode", "max_memory_kb": 2**40}, r"manifest\.max_memory_kb: "),
    ("typo", {"type": "TyNode", "fule": 5}, r"manifest: unknown key `fule`"),
    ("outport", {"type": "OpNode", "ports": ["out"]}, r"ports: bad port name 'out'"),
    ("dupport", {"type": "DpNode", "ports": ["a", "a"]}, r"ports: a port is named twice"),
    ("longtype", {"type": "N" * 65}, r"manifest\.type: Expected `str` of length <= 64"),
    ("builtin", {"type": "RouteNode"}, r"type RouteNode is already provided by mechaway\.nodes"),
    (
        "typelist",
        {"type": "TlNode", "params": props(x={"type": ["string", "null"]})},
        r"params\.properties\.x\.type must be one of string, number",
    ),
    (
        "floatenum",
        {"type": "FeNode", "params": props(x={"type": "number", "enum": [1.5, 2.5]})},
        r"params\.properties\.x\.enum\[0\]: only strings, integers and booleans",
    ),
    (
        "enumtype",
        {"type": "EtNode", "params": props(x={"type": "string", "enum": ["a", 1]})},
        r"params\.properties\.x\.enum\[1\]: Expected `str`, got `int`",
    ),
    (
        "baddefault",
        {"type": "BdNode", "params": props(x={"type": "integer", "default": "nope"})},
        r"params\.properties\.x\.default does not fit the schema: Expected `int`, got `str`",
    ),
    (
        "defaultbound",
        {"type": "DbNode", "params": props(x={"type": "integer", "minimum": 5, "default": 1})},
        r"params\.properties\.x\.default does not fit the schema: Expected `int` >= 5",
    ),
    (
        "dunder",
        {"type": "DuNode", "params": props(__weakref__={"type": "integer"})},
        r"params\.properties\.__weakref__: the name is reserved",
    ),
    (
        "notident",
        {"type": "NiNode", "params": props(**{"max-temp": {"type": "number"}})},
        r"params\.properties: 'max-temp' is not an identifier",
    ),
    (
        "pattern",
        {"type": "PaNode", "params": props(x={"type": "string", "pattern": "(a+)+$"})},
        r"params\.properties\.x: keyword 'pattern' is not supported for type string",
    ),
    (
        "wrongbound",
        {"type": "WbNode", "params": props(x={"type": "string", "minimum": 3})},
        r"params\.properties\.x: keyword 'minimum' is not supported for type string",
    ),
    (
        "selfref",
        {"type": "SrNode", "params": {"$ref": "#", "properties": {"x": {"$ref": "#"}}}},
        r"params: keyword '\$ref' is not supported",
    ),
    (
        "proprefs",
        {"type": "PrNode", "params": props(x={"$ref": "#"})},
        r"params\.properties\.x\.type must be one of",
    ),
    (
        "openparams",
        {"type": "OpenNode", "params": {**props(), "additionalProperties": True}},
        r"params\.additionalProperties must be false",
    ),
    (
        "requiredstr",
        {"type": "RsNode", "params": {**props(), "required": "abc"}},
        r"params\.required must be a list of property names",
    ),
    (
        "requiredghost",
        {"type": "RgNode", "params": {**props(x={"type": "number"}), "required": ["y"]}},
        r"params\.required: 'y' is not in params\.properties",
    ),
    (
        "manyprops",
        {"type": "MpNode", "params": props(**{f"p{i}": {"type": "number"} for i in range(5000)})},
        r"params\.properties: more than 256 properties",
    ),
    (
        "deepitems",
        {"type": "DiNode", "params": props(x=nested_items(20))},
        r"params\.properties\.x(\.items)+: nested deeper than 8",
    ),
]


@pytest.mark.parametrize(
    ("name", "manifest", "error"), HOSTILE_MANIFESTS, ids=[c[0] for c in HOSTILE_MANIFESTS]
)
def test_hostile_manifest_is_one_report_naming_the_key(
    plugdir: pathlib.Path, name: str, manifest: Any, error: str
) -> None:
    write(plugdir, name, manifest, wat(MEMORY + ALLOC + PROCESS))
    write(plugdir, "good", {"type": "GoodPackNode"}, ECHO.encode())
    reports = scan(plugins.PackWatcher(plugdir))
    assert reports[name].types == ()
    assert reports[name].error.startswith("ManifestError: ")
    assert reports[name].error.count("\n") == 0
    assert len(reports[name].error) < 1000
    assert re.search(error, reports[name].error), reports[name].error
    # the good pack next to it loaded, and validation of its flows works
    assert reports["good"] == PluginReport("good", f"wasm pack {plugdir / 'good.json'}",
                                           ("GoodPackNode",))  # fmt: skip
    validate(flow("GoodPackNode", {}))
    if isinstance(manifest, dict) and manifest.get("type") != "RouteNode":
        assert get_node_type(manifest["type"]) is None


def test_manifest_files_that_are_no_files(plugdir: pathlib.Path, tmp_path: pathlib.Path) -> None:
    """A FIFO by a manifest's name used to block the scan for good (and the daemon's
    start, which scans on the event loop)."""
    os.mkfifo(plugdir / "fifo.json")
    (plugdir / "zero.json").symlink_to("/dev/zero")
    (plugdir / "dir.json").mkdir()
    (tmp_path / "elsewhere.json").write_bytes(orjson.dumps({"type": "ElsewhereNode"}))
    (plugdir / "out.json").symlink_to(tmp_path / "elsewhere.json")
    write(plugdir, "good", {"type": "GoodPackNode"}, ECHO.encode())
    reports = scan(plugins.PackWatcher(plugdir))
    assert reports["fifo"].error == "ManifestError: cannot read manifest: not a regular file"
    assert reports["zero"].error.startswith("ManifestError: manifest zero.json resolves to /dev")
    assert reports["dir"].error == "ManifestError: cannot read manifest: Is a directory"
    assert re.search(
        r"manifest out\.json resolves to .*elsewhere\.json, outside", reports["out"].error
    )
    assert get_node_type("ElsewhereNode") is None
    assert reports["good"].types == ("GoodPackNode",)


def test_schema_keywords_are_enforced_not_ignored(plugdir: pathlib.Path) -> None:
    """Bounds, item types and enums the manifest states are what validation enforces."""
    write(plugdir, "bounds", {"type": "BoundsPackNode", "params": props(
        level={"type": "integer", "minimum": 1, "maximum": 10, "default": 5},
        ratio={"type": "number", "exclusiveMaximum": 1, "description": "a fraction"},
        label={"type": "string", "maxLength": 4},
        tags={"type": "array", "items": {"type": "string"}, "maxItems": 2,
              "default": ["a"]},
        mode={"type": "string", "enum": ["fast", "slow"], "default": "fast"},
        **{"class": {"type": "boolean", "default": False}},
    )}, ECHO.encode())  # fmt: skip
    assert scan(plugins.PackWatcher(plugdir))["bounds"].error == ""
    for params, where in [
        ({"level": 0}, "level"),
        ({"level": 11}, "level"),
        ({"ratio": 1}, "ratio"),
        ({"label": "toolong"}, "label"),
        ({"tags": [1]}, "tags"),
        ({"tags": ["a", "b", "c"]}, "tags"),
        ({"mode": "medium"}, "mode"),
    ]:
        with pytest.raises(FlowError, match=rf"params\.{where}"):
            validate(flow("BoundsPackNode", params))
    ok = validate(flow("BoundsPackNode", {"ratio": 0.5, "class": True})).nodes["x"].params
    assert ok.level == 5 and ok.tags == ["a"] and getattr(ok, "class") is True
    other = validate(flow("BoundsPackNode", {})).nodes["x"].params
    assert other.tags is not ok.tags  # a fresh default per node, not one shared list
    schema = params_schema("BoundsPackNode")["$defs"]["BoundsPackNodeParams"]["properties"]
    assert schema["level"] == {"type": "integer", "minimum": 1, "maximum": 10, "default": 5}
    assert b'"description":"a fraction"' in orjson.dumps(schema["ratio"])


# --- module files ---------------------------------------------------------------------------


def test_module_files_that_are_no_modules(
    plugdir: pathlib.Path, tmp_path: pathlib.Path, c_wasm: pathlib.Path
) -> None:
    outside = tmp_path / "outside.wasm"
    shutil.copy(c_wasm, outside)
    cases = {
        "symout": r"module symout\.wasm resolves to .*outside\.wasm, outside ",
        "devzero": r"module devzero\.wasm resolves to /dev/zero, outside ",
        "fifo": r"cannot read WASM module .*fifo\.wasm: not a regular file",
        "dir": r"cannot read WASM module .*dir\.wasm: Is a directory",
        "huge": rf"huge\.wasm: \d+ bytes, more than the limit of {MAX_MODULE_BYTES}",
        "garbage": r"garbage\.wasm\): neither a WASM binary nor valid WAT text",
        "badbinary": r"badbinary\.wasm\): not a valid WASM module",
        "imports": r"the module imports env\.f; mechaway provides no imports",
        "noexports": r"must export its linear memory as 'memory'",
        "wrongsig": r"export process must be \(i32, i32\) -> \(i64\), is \(\) -> \(\)",
        "bigmemory": r"needs 2621440000 bytes of memory at start, more than",
        "startloop": r"start function trapped: all fuel consumed",
        "bigtable": r"cannot instantiate",
        "missing": r"module missing\.wasm is missing",
        "dangling": r"pack dangling\.json: cannot read WASM module .*nowhere\.wasm: No such file",
    }
    for name in cases:
        write(plugdir, name, {"type": f"{name.title()}PackNode", "fuel": 100_000})
    (plugdir / "symout.wasm").symlink_to(outside)
    (plugdir / "devzero.wasm").symlink_to("/dev/zero")
    os.mkfifo(plugdir / "fifo.wasm")
    (plugdir / "dir.wasm").mkdir()
    with open(plugdir / "huge.wasm", "wb") as f:
        f.truncate(MAX_MODULE_BYTES + 1)  # sparse
    (plugdir / "garbage.wasm").write_bytes(bytes(range(256)) * 4)
    (plugdir / "badbinary.wasm").write_bytes(b"\0asm\x01\0\0\0\xff\xff")
    (plugdir / "imports.wasm").write_bytes(
        wat('(import "env" "f" (func))' + MEMORY + ALLOC + PROCESS)
    )
    (plugdir / "noexports.wasm").write_bytes(wat("(func)"))
    (plugdir / "wrongsig.wasm").write_bytes(wat(MEMORY + ALLOC + '(func (export "process"))'))
    (plugdir / "bigmemory.wasm").write_bytes(
        wat('(memory (export "memory") 40000)' + ALLOC + PROCESS)
    )
    (plugdir / "startloop.wasm").write_bytes(
        wat(MEMORY + ALLOC + PROCESS + "(func $s (loop $l (br $l))) (start $s)")
    )
    (plugdir / "bigtable.wasm").write_bytes(
        wat(MEMORY + ALLOC + PROCESS + "(table 10000000 funcref)")
    )
    (plugdir / "dangling.wasm").symlink_to(plugdir / "nowhere.wasm")  # fmt: skip
    reports = scan(plugins.PackWatcher(plugdir))
    for name, error in cases.items():
        report = reports[name]
        assert report.types == () and get_node_type(f"{name.title()}PackNode") is None, name
        assert re.search(error, report.error), (name, report.error)


def test_a_symlink_inside_the_pack_directory_is_fine(
    plugdir: pathlib.Path, c_wasm: pathlib.Path
) -> None:
    shutil.copy(c_wasm, plugdir / "real.bin")
    (plugdir / "linked.wasm").symlink_to("real.bin")
    write(plugdir, "linked", {"type": "LinkedPackNode"})
    assert scan(plugins.PackWatcher(plugdir))["linked"].types == ("LinkedPackNode",)


def test_a_wasm_node_module_param_never_reads_a_fifo_or_device(tmp_path: pathlib.Path) -> None:
    os.mkfifo(tmp_path / "fifo.wasm")
    for path in (tmp_path / "fifo.wasm", pathlib.Path("/dev/zero")):
        errors: list[BaseException] = []

        def load(path: pathlib.Path = path, errors: list[BaseException] = errors) -> None:
            try:
                WasmSandbox(path, name="n")
            except BaseException as err:
                errors.append(err)

        t = threading.Thread(target=load, daemon=True)
        t.start()
        t.join(120)
        assert errors, f"reading {path} never returned"
        assert isinstance(errors[0], WasmLoadError)
        assert re.search(r"cannot read WASM module .*: not a regular file", str(errors[0]))


# --- hot reload, removal, two packs for one type ------------------------------------------


@pytest.mark.asyncio
async def test_a_broken_rewrite_leaves_the_previous_version_working(
    plugdir: pathlib.Path, tmp_path: pathlib.Path, c_wasm: pathlib.Path
) -> None:
    shutil.copy(c_wasm, plugdir / "hot.wasm")
    write(plugdir, "hot", {"type": "HotPackNode"})
    watcher = plugins.PackWatcher(plugdir)
    assert scan(watcher)["hot"].types == ("HotPackNode",)
    engine = Engine(Services(data_dir=tmp_path))
    await engine.deploy(validate(flow("HotPackNode", {}, "a")))
    assert (await send(engine, "a", MSG))[0]["payload"] == "off"

    (plugdir / "hot.wasm").write_bytes(b"garbage, not wasm")
    report = scan(watcher)["hot"]
    assert "neither a WASM binary" in report.error
    assert "the previous version of HotPackNode stays in use" in report.error
    assert report.types == ("HotPackNode",)
    # a flow deployed now still gets the module that was checked, not the file on disk
    await engine.deploy(validate(flow("HotPackNode", {}, "b")))
    assert (await send(engine, "b", MSG))[0]["payload"] == "off"
    assert (await send(engine, "a", MSG))[-1]["payload"] == "off"

    # renamed: the old name goes, the new one comes
    shutil.copy(c_wasm, plugdir / "hot.wasm")
    write(plugdir, "hot", {"type": "ColdPackNode"})
    assert scan(watcher)["hot"].types == ("ColdPackNode",)
    assert get_node_type("HotPackNode") is None
    assert get_node_type("ColdPackNode") is not None

    # removed while flows use it: they keep running, new ones cannot use the type
    (plugdir / "hot.json").unlink()
    assert scan(watcher) == {}
    assert get_node_type("ColdPackNode") is None
    assert len(await send(engine, "a", MSG)) == 3
    with pytest.raises(FlowError, match="unknown node type 'ColdPackNode'"):
        validate(flow("ColdPackNode", {}, "c"))
    await engine.stop()


def test_two_manifests_for_one_type(plugdir: pathlib.Path, c_wasm: pathlib.Path) -> None:
    for name in ("a", "b"):
        shutil.copy(c_wasm, plugdir / f"{name}.wasm")
        write(plugdir, name, {"type": "TwinPackNode"})
    watcher = plugins.PackWatcher(plugdir)
    reports = scan(watcher)
    assert reports["a"].types == ("TwinPackNode",) and reports["a"].error == ""
    assert reports["b"].types == ()
    assert f"already provided by wasm pack {plugdir / 'a.json'}" in reports["b"].error
    (plugdir / "a.json").unlink()
    reports = scan(watcher)  # the other claimant takes over, without being touched
    assert list(reports) == ["b"]
    assert reports["b"] == PluginReport("b", f"wasm pack {plugdir / 'b.json'}", ("TwinPackNode",))
    assert get_node_type("TwinPackNode") is not None


# --- the compiled-module cache ------------------------------------------------------------


def test_a_cache_file_planted_for_another_module_is_not_run(
    wat_wasm: pathlib.Path, tmp_path: pathlib.Path
) -> None:
    cache = tmp_path / "cache"
    echo = WasmSandbox(ECHO.encode(), cache_dir=cache)
    real = WasmSandbox(wat_wasm, cache_dir=cache)
    assert echo.cache_path is not None and real.cache_path is not None
    shutil.copy(echo.cache_path, real.cache_path)  # valid compiled code, wrong module
    again = WasmSandbox(wat_wasm, cache_dir=cache)
    assert not again.from_cache
    assert again.call(MSG) == {**MSG, "payload": "off"}  # the threshold module, not echo
    assert WasmSandbox(wat_wasm, cache_dir=cache).from_cache  # replaced by a good one


@pytest.mark.parametrize("damage", ["flip", "truncate", "empty", "writable", "symlink", "fifo"])
def test_a_damaged_or_foreign_cache_file_is_recompiled(
    wat_wasm: pathlib.Path, tmp_path: pathlib.Path, damage: str
) -> None:
    path = WasmSandbox(wat_wasm, cache_dir=tmp_path).cache_path
    assert path is not None
    good = path.read_bytes()
    if damage == "flip":
        data = bytearray(good)
        data[len(data) // 2] ^= 0x40
        path.write_bytes(bytes(data))
    elif damage == "truncate":
        path.write_bytes(good[: len(good) - 1])
    elif damage == "empty":
        path.write_bytes(b"")
    elif damage == "writable":
        path.chmod(0o666)  # anyone could have put anything there
    elif damage == "symlink":
        (tmp_path / "elsewhere").write_bytes(good)
        path.unlink()
        path.symlink_to(tmp_path / "elsewhere")
    else:
        path.unlink()
        os.mkfifo(path)
    again = WasmSandbox(wat_wasm, cache_dir=tmp_path)
    assert not again.from_cache
    assert again.call(MSG) == {**MSG, "payload": "off"}


def test_an_unusable_cache_dir_only_costs_the_cache(
    wat_wasm: pathlib.Path, tmp_path: pathlib.Path
) -> None:
    blocker = tmp_path / "cache"
    blocker.write_text("a file where the cache directory should be")
    sandbox = WasmSandbox(wat_wasm, cache_dir=blocker)
    assert not sandbox.from_cache
    assert sandbox.call(MSG) == {**MSG, "payload": "off"}
    assert blocker.read_text().startswith("a file")


def test_the_cache_keeps_only_the_newest_files(tmp_path: pathlib.Path) -> None:
    """A pack rewritten again and again adds a cache file per version: the oldest go."""
    paths = []
    for i in range(70):
        body = (
            MEMORY
            + ALLOC
            + f'(func (export "process") (param i32 i32) (result i64) (i64.const {i}))'
        )
        sandbox = WasmSandbox(f"(module {body})".encode(), cache_dir=tmp_path)
        assert sandbox.cache_path is not None
        os.utime(sandbox.cache_path, ns=(i * 10**9, i * 10**9))  # distinct ages
        paths.append(sandbox.cache_path)
    left = set(tmp_path.glob("*.cwasm"))
    assert len(left) == 64
    assert left == set(paths[-64:])


def test_an_entry_point_that_calls_sys_exit_is_reported(
    tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import importlib.metadata

    (tmp_path / "quitting_plugin.py").write_text("import sys\nsys.exit('no thanks')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    ep = importlib.metadata.EntryPoint("quitter", "quitting_plugin", plugins.GROUP)
    monkeypatch.setattr(importlib.metadata, "entry_points", lambda group: [ep])
    monkeypatch.setattr(registry, "_reports", {})
    (report,) = plugins.load_entry_points(rescan=True)
    assert report.types == () and report.error == "SystemExit: no thanks"
