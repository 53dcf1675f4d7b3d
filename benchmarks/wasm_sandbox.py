"""Per-message cost of the WASM sandbox doing the threshold logic (issue 4 target: <= 15 us).

Measures ``WasmSandbox.call`` on the examples from tests/wasm_src: dict -> msgpack ->
process -> msgpack -> dict, through the unchecked raw call. The C example is measured
when clang is installed. Prints one JSON line.
"""

from __future__ import annotations

import json
import pathlib
import shutil
import subprocess
import tempfile
import time
import timeit
from typing import Any

import wasmtime

from mechaway.logic.wasm import WasmSandbox

SRC = pathlib.Path(__file__).resolve().parents[1] / "tests" / "wasm_src"
MSG: dict[str, Any] = {
    "topic": "gh/1/temp",
    "ts": 1_700_000_000.25,
    "seq": 42,
    "payload": {"temp": 31.5},
}
RUNS = 100_000


def us_per_call(sandbox: WasmSandbox) -> float:
    best = min(timeit.repeat(lambda: sandbox.call(MSG), number=RUNS, repeat=5))
    return round(best / RUNS * 1e6, 2)


def build_c(out: pathlib.Path) -> pathlib.Path | None:
    clang = shutil.which("clang")
    if clang is None:
        return None
    cmd = [
        clang, "--target=wasm32", "-O2", "-ffreestanding", "-nostdlib", "-fno-builtin",
        "-Wl,--no-entry", "-o", str(out), str(SRC / "threshold.c"),
    ]  # fmt: skip
    subprocess.run(cmd, check=True, capture_output=True)
    return out


def main() -> None:
    figures: dict[str, float | None] = {}
    with tempfile.TemporaryDirectory() as tmp:
        wat = pathlib.Path(tmp, "threshold.wasm")
        wat.write_bytes(wasmtime.wat2wasm((SRC / "threshold.wat").read_text()))
        sandbox = WasmSandbox(wat)
        assert sandbox.call(MSG) == {**MSG, "payload": "on"}
        figures["wasm_call_us_per_msg"] = us_per_call(sandbox)

        c = build_c(pathlib.Path(tmp, "threshold-c.wasm"))
        if c is not None:
            figures["wasm_c_call_us_per_msg"] = us_per_call(WasmSandbox(c))

        # the checked Func.__call__ path, for comparison: the process call alone
        store = sandbox._store
        assert store is not None
        store.set_fuel(10**12)
        process = sandbox._keep[1]["process"]  # type: ignore[index]
        ptr, n = sandbox._in_ptr, 16
        runs = 20_000
        best = min(timeit.repeat(lambda: process(store, ptr, n), number=runs, repeat=3))
        figures["wasm_checked_call_only_us"] = round(best / runs * 1e6, 2)

        cache = pathlib.Path(tmp, "cache")
        t0 = time.perf_counter()
        WasmSandbox(wat, cache_dir=cache)
        t1 = time.perf_counter()
        WasmSandbox(wat, cache_dir=cache)
        t2 = time.perf_counter()
        figures["wasm_load_compile_ms"] = round((t1 - t0) * 1e3, 2)
        figures["wasm_load_cached_ms"] = round((t2 - t1) * 1e3, 2)
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
