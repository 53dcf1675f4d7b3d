"""The WASM sandbox: the ABI, its limits, and recovery after every kind of failure.

The example modules are built from source here: tests/wasm_src/threshold.wat with
wasmtime's wat2wasm, tests/wasm_src/threshold.c with Debian's clang --target=wasm32 and
lld. A missing clang fails the run: the C example is the proof that the ABI is usable
from a real language, so it must not silently skip.
"""

from __future__ import annotations

import pathlib
import time
from typing import Any

import pytest
import wasmtime

from mechaway.errors import LimitExceeded, SandboxError
from mechaway.logic.wasm import WasmLoadError, WasmSandbox

MSG: dict[str, Any] = {
    "topic": "gh/1/temp",
    "ts": 1_700_000_000.25,
    "seq": 42,
    "payload": {"temp": 31.5},
}

# the smallest module the ABI accepts: it echoes its input
ECHO = b"""(module (memory (export "memory") 1)
  (func (export "alloc") (param i32) (result i32) (i32.const 1024))
  (func (export "process") (param $p i32) (param $n i32) (result i64)
    (i64.or (i64.shl (i64.extend_i32_u (local.get $p)) (i64.const 32))
            (i64.extend_i32_u (local.get $n)))))"""


@pytest.fixture
def chaos(chaos_wasm: pathlib.Path) -> WasmSandbox:
    return WasmSandbox(chaos_wasm, name="chaos", max_memory_bytes=1024 * 1024, fuel=1_000_000)


def do(mode: int) -> dict[str, Any]:
    """A message that makes chaos.wat do ``mode`` (its last msgpack byte)."""
    return {"do": mode}


# --- the examples: threshold logic in WAT and in C ---------------------------------------


@pytest.mark.parametrize("example", ["wat_wasm", "c_wasm"])
def test_threshold_example(example: str, request: pytest.FixtureRequest) -> None:
    module: pathlib.Path = request.getfixturevalue(example)
    sandbox = WasmSandbox(module, name=example)
    cases = [(31.5, "on"), (30, "off"), (30.01, "on"), (-4, "off"), (1000, "on"), (29.9, "off")]
    for seq, (temp, state) in enumerate(cases):
        msg = {**MSG, "seq": seq, "payload": {"temp": temp, "unit": "C"}}
        assert sandbox.call(msg) == {**msg, "payload": state}
    # a big seq and extra nested fields survive byte for byte
    msg = {"seq": 2**40, "payload": {"x": [1, {"y": None}], "temp": 50}, "raw": list(range(300))}
    assert sandbox.call(msg) == {**msg, "payload": "on"}


@pytest.mark.parametrize("example", ["wat_wasm", "c_wasm"])
def test_threshold_example_reports_bad_input(example: str, request: pytest.FixtureRequest) -> None:
    sandbox = WasmSandbox(request.getfixturevalue(example), name="hot")
    with pytest.raises(SandboxError, match=r"hot: process failed: payload.temp missing"):
        sandbox.call({"seq": 1, "payload": {"temp": "warm"}})
    assert sandbox.call(MSG) == {**MSG, "payload": "on"}
    assert sandbox.restarts == 0  # a module-reported error is not a trap


def test_json_codec_round_trip() -> None:
    sandbox = WasmSandbox(ECHO, codec="json")
    msg = {**MSG, "tags": ["a", "b"], "ok": True, "none": None}
    assert sandbox.call(msg) == msg


def test_init_params_reach_the_module(c_wasm: pathlib.Path) -> None:
    default = WasmSandbox(c_wasm)
    lowered = WasmSandbox(c_wasm, params={"threshold": 20})
    warm = {**MSG, "payload": {"temp": 25}}
    assert default.call(warm) == {**warm, "payload": "off"}
    assert lowered.call(warm) == {**warm, "payload": "on"}


def test_init_params_select_port_output(c_wasm: pathlib.Path) -> None:
    sandbox = WasmSandbox(c_wasm, params={"threshold": 20.5, "route": True})
    warm, cool = {**MSG, "payload": {"temp": 21}}, {**MSG, "payload": {"temp": 20}}
    assert sandbox.call(warm) == [("hot", {**warm, "payload": "on"})]
    assert sandbox.call(cool) == [("cold", {**cool, "payload": "off"})]


@pytest.mark.parametrize(
    ("params", "error"),
    [
        ({"threshold": "thirty"}, "params.threshold must be a number"),
        ({"route": "yes"}, "params.route must be a boolean"),
    ],
)
def test_init_failure_is_a_load_error(
    c_wasm: pathlib.Path, params: dict[str, Any], error: str
) -> None:
    with pytest.raises(WasmLoadError, match=rf"cond: init failed: {error}"):
        WasmSandbox(c_wasm, name="cond", params=params)


def test_params_survive_a_restart(c_wasm: pathlib.Path) -> None:
    sandbox = WasmSandbox(c_wasm, params={"threshold": 20}, fuel=200_000)
    warm = {**MSG, "payload": {"temp": 25}}
    with pytest.raises(LimitExceeded, match="ran out of fuel"):
        sandbox.call({**warm, "junk": list(range(100_000))})  # too much to skip on 200k fuel
    assert sandbox.call(warm) == {**warm, "payload": "on"}  # init ran again: still 20
    assert sandbox.restarts == 1


# --- output forms ------------------------------------------------------------------------


def test_drop_and_port_pairs(chaos: WasmSandbox) -> None:
    assert chaos.call(do(8)) is None
    assert chaos.call(do(10)) == [("a", {"n": 1}), ("b", {})]
    assert chaos.call(do(0)) == do(0)


# --- limits, bad behaviour, and recovery ---------------------------------------------------


def test_endless_loop_is_cut_by_fuel(chaos: WasmSandbox) -> None:
    started = time.perf_counter()
    with pytest.raises(LimitExceeded, match=r"chaos: process ran out of fuel \(1000000 units"):
        chaos.call(do(1))
    assert time.perf_counter() - started < 1.0
    assert chaos.call(do(0)) == do(0)
    assert chaos.restarts == 1


def test_memory_growth_stops_at_the_limit(chaos: WasmSandbox) -> None:
    with pytest.raises(LimitExceeded, match=r"linear memory is at its limit: \d+ of 1048576 bytes"):
        chaos.call(do(2))
    assert chaos.memory_bytes == 1024 * 1024  # grown to the cap, never past it
    assert chaos.call(do(0)) == do(0)
    assert chaos.memory_bytes == 65536  # a fresh instance, a fresh heap
    assert chaos.restarts == 1


def test_message_larger_than_memory_limit(chaos: WasmSandbox) -> None:
    with pytest.raises(LimitExceeded, match="cannot fit the 1048576-byte memory limit"):
        chaos.call({"blob": "x" * 2_000_000, "do": 0})
    with pytest.raises(LimitExceeded, match=r"alloc\(\d+\) returned 0"):
        chaos.call({"blob": "x" * 1_047_600, "do": 0})  # fits the cap, not next to the heap
    msg = {"blob": "x" * 500_000, "do": 0}
    assert chaos.call(msg) == msg
    assert chaos.restarts == 1  # alloc's "out of memory" gives the module a fresh heap


@pytest.mark.parametrize(
    ("mode", "error", "message"),
    [
        (1, LimitExceeded, r"ran out of fuel"),
        (2, LimitExceeded, r"memory is at its limit"),
        (3, SandboxError, r"output at 2147418112\+16, outside its 65536-byte memory"),
        (4, SandboxError, r"output at 65000\+4096, outside its 65536-byte memory"),
        (5, SandboxError, r"returned 4 bytes that are not valid msgpack"),
        (6, SandboxError, r"process trapped: wasm `unreachable` instruction executed"),
        (7, SandboxError, r"process failed: boom: the module says no"),
        (9, SandboxError, r"output must be a map, an array of \[port, map\] pairs or nil, not int"),
        (11, LimitExceeded, r"overflowed the wasm stack"),
        (13, SandboxError, r"process failed: \(no readable message: -0x1\)"),
        (14, SandboxError, r"output\[0\] is not a \[port, map\] pair"),
    ],
)
def test_misbehaviour_is_reported_and_the_next_call_works(
    chaos: WasmSandbox, mode: int, error: type[SandboxError], message: str
) -> None:
    with pytest.raises(error, match=message) as info:
        chaos.call(do(mode))
    assert str(info.value).startswith("chaos: ")
    assert chaos.call(do(0)) == do(0)
    assert chaos.call({"payload": {"temp": 1}, "do": 0}) == {"payload": {"temp": 1}, "do": 0}


def test_traps_restart_the_instance_other_failures_do_not(chaos: WasmSandbox) -> None:
    assert chaos.call(do(12)) == {"calls": 1}
    assert chaos.call(do(12)) == {"calls": 2}
    with pytest.raises(SandboxError):
        chaos.call(do(5))  # garbage output: the instance is fine, keep its state
    assert chaos.call(do(12)) == {"calls": 4}
    assert chaos.restarts == 0
    with pytest.raises(SandboxError, match="trapped"):
        chaos.call(do(6))  # a trap may leave the heap half-updated: start afresh
    assert chaos.call(do(12)) == {"calls": 1}
    assert chaos.restarts == 1


def test_bad_alloc_pointer_is_refused_before_any_write() -> None:
    module = b"""(module (memory (export "memory") 1)
      (func (export "alloc") (param i32) (result i32) (i32.const 65500))
      (func (export "process") (param i32 i32) (result i64) (i64.const 0)))"""
    sandbox = WasmSandbox(module, name="liar")
    for _ in range(2):
        with pytest.raises(
            SandboxError, match=r"alloc\(1024\) returned 65500, not a 1024-byte region"
        ):
            sandbox.call(MSG)


def test_unencodable_message() -> None:
    sandbox = WasmSandbox(ECHO, name="echo")
    with pytest.raises(SandboxError, match="echo: message cannot be encoded as msgpack"):
        sandbox.call({"when": object()})
    assert sandbox.call(MSG) == MSG


def test_garbage_json_output() -> None:
    module = b"""(module (memory (export "memory") 1) (data (i32.const 16) "{nope")
      (func (export "alloc") (param i32) (result i32) (i32.const 1024))
      (func (export "process") (param i32 i32) (result i64) (i64.const 0x1000000005)))"""
    sandbox = WasmSandbox(module, codec="json")
    with pytest.raises(SandboxError, match="returned 5 bytes that are not valid json"):
        sandbox.call(MSG)


def test_closed_sandbox_refuses_calls() -> None:
    sandbox = WasmSandbox(ECHO, name="echo")
    sandbox.close()
    sandbox.close()
    with pytest.raises(SandboxError, match="echo: sandbox is closed"):
        sandbox.call(MSG)


# --- loading ------------------------------------------------------------------------------


MEMORY = '(memory (export "memory") 1)'
ALLOC = '(func (export "alloc") (param i32) (result i32) (i32.const 1024))'
PROCESS = '(func (export "process") (param i32 i32) (result i64) (i64.const 0))'


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (ALLOC + PROCESS, "must export its linear memory as 'memory'"),
        (MEMORY + PROCESS, r"must export a function alloc\(i32\) -> \(i32\)"),
        (MEMORY + ALLOC, r"must export a function process\(i32, i32\) -> \(i64\)"),
        (
            MEMORY + ALLOC + '(func (export "process") (param i32 i32) (result i32) (i32.const 0))',
            r"export process must be \(i32, i32\) -> \(i64\), is \(i32, i32\) -> \(i32\)",
        ),
        (
            MEMORY + ALLOC + PROCESS + '(func (export "init") (param i32 i32))',
            r"export init must be \(i32, i32\) -> \(i64\), is \(i32, i32\) -> \(\)",
        ),
        (
            '(import "wasi_snapshot_preview1" "fd_write" (func (param i32 i32 i32 i32)'
            " (result i32)))" + MEMORY + ALLOC + PROCESS,
            r"imports wasi_snapshot_preview1.fd_write; mechaway provides no imports \(no WASI",
        ),
        (
            '(memory (export "memory") 32)' + ALLOC + PROCESS,
            "needs 2097152 bytes of memory at start",
        ),
        (
            MEMORY + ALLOC + PROCESS + "(func $s (loop $l (br $l))) (start $s)",
            "start function trapped: all fuel consumed",
        ),
        (
            MEMORY + ALLOC + PROCESS
            + '(func (export "init") (param i32 i32) (result i64) unreachable)',
            "init trapped: wasm `unreachable` instruction executed",
        ),
    ],
)  # fmt: skip
def test_unusable_modules_are_load_errors(body: str, message: str) -> None:
    with pytest.raises(WasmLoadError, match=message):
        WasmSandbox(f"(module {body})".encode(), name="bad", max_memory_bytes=1024 * 1024)


@pytest.mark.parametrize(
    ("module", "message"),
    [
        (b"hello", "neither a WASM binary nor valid WAT text"),
        (b"\0asm\x01\0\0\0\xff\xff", "not a valid WASM module"),
    ],
)
def test_not_wasm_at_all(module: bytes, message: str) -> None:
    with pytest.raises(WasmLoadError, match=message):
        WasmSandbox(module)


def test_missing_file_is_a_load_error(tmp_path: pathlib.Path) -> None:
    with pytest.raises(WasmLoadError, match="cannot read WASM module"):
        WasmSandbox(tmp_path / "absent.wasm")


def test_params_without_init_are_refused() -> None:
    with pytest.raises(WasmLoadError, match="params given but the module exports no init"):
        WasmSandbox(ECHO, params={"threshold": 3})


def test_bad_settings_are_refused() -> None:
    with pytest.raises(WasmLoadError, match="unknown codec 'cbor'"):
        WasmSandbox(ECHO, codec="cbor")
    with pytest.raises(WasmLoadError, match="fuel must be positive"):
        WasmSandbox(ECHO, fuel=0)
    with pytest.raises(WasmLoadError, match="max_memory_bytes must be between"):
        WasmSandbox(ECHO, max_memory_bytes=2**32)


# --- the compiled-module cache -------------------------------------------------------------


def test_second_load_uses_the_serialized_module(
    wat_wasm: pathlib.Path, tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    first = WasmSandbox(wat_wasm, cache_dir=tmp_path)
    assert not first.from_cache
    assert first.cache_path is not None and first.cache_path.is_file()
    assert first.cache_path.parent == tmp_path
    assert f"wasmtime{wasmtime_version()}" in first.cache_path.name

    def no_compiling(*args: object, **kwargs: object) -> None:
        raise AssertionError("compiled although the cache holds the module")

    monkeypatch.setattr(wasmtime.Module, "__init__", no_compiling)
    second = WasmSandbox(wat_wasm, cache_dir=tmp_path)
    assert second.from_cache
    assert second.cache_path == first.cache_path
    assert second.call(MSG) == {**MSG, "payload": "on"}
    assert sorted(p.name for p in tmp_path.iterdir()) == [first.cache_path.name]


def test_corrupt_cache_file_is_recompiled(wat_wasm: pathlib.Path, tmp_path: pathlib.Path) -> None:
    path = WasmSandbox(wat_wasm, cache_dir=tmp_path).cache_path
    assert path is not None
    good = path.read_bytes()
    path.write_bytes(good[: len(good) // 3])
    again = WasmSandbox(wat_wasm, cache_dir=tmp_path)
    assert not again.from_cache
    assert again.call(MSG) == {**MSG, "payload": "on"}
    assert path.read_bytes() == good  # rewritten whole
    assert WasmSandbox(wat_wasm, cache_dir=tmp_path).from_cache


def test_different_modules_get_different_cache_files(
    wat_wasm: pathlib.Path, c_wasm: pathlib.Path, tmp_path: pathlib.Path
) -> None:
    a = WasmSandbox(wat_wasm, cache_dir=tmp_path).cache_path
    b = WasmSandbox(c_wasm, cache_dir=tmp_path).cache_path
    assert a is not None and b is not None and a != b
    assert len(list(tmp_path.glob("*.cwasm"))) == 2


def wasmtime_version() -> str:
    import importlib.metadata

    return importlib.metadata.version("wasmtime")


# --- speed ------------------------------------------------------------------------------


def test_call_uses_the_fast_path(wat_wasm: pathlib.Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Guard against a fall back to ``Func.__call__`` (~50 us a call against ~4 us through
    the unchecked path; the speed itself is ``benchmarks/wasm_sandbox.py``'s to measure,
    not a timed test's): once loaded, a call never goes through it."""
    sandbox = WasmSandbox(wat_wasm)
    sandbox.call(MSG)  # loaded and warm

    def checked_call(*args: object, **kwargs: object) -> None:
        raise AssertionError("WasmSandbox.call went through wasmtime's checked Func.__call__")

    monkeypatch.setattr(wasmtime.Func, "__call__", checked_call)
    for _ in range(3):
        assert sandbox.call(MSG) == sandbox.call(MSG)
