"""Suite-wide fixtures: every async test runs on a uvloop event loop."""

from __future__ import annotations

import pathlib
import shutil
import subprocess
from collections.abc import AsyncIterator, Callable, Mapping
from typing import Any

import pytest
import pytest_asyncio
import uvloop
import wasmtime

import mechaway.testing.nodes
from mechaway.runtime.engine import Engine
from mechaway.runtime.manager import FlowDirWatcher, FlowManager
from mechaway.store.db import Database
from mechaway.store.flows import FlowStore


def pytest_asyncio_loop_factories(
    config: pytest.Config, item: pytest.Item
) -> Mapping[str, Callable[[], Any]]:
    """pytest-asyncio runs each async test on a uvloop loop (the daemon's loop)."""
    return {"uvloop": uvloop.new_event_loop}


SRC = pathlib.Path(__file__).resolve().parent / "wasm_src"


# --- the example WASM modules, built from source (tests/wasm_src) once per run ---


@pytest.fixture(scope="session")
def build_dir(tmp_path_factory: pytest.TempPathFactory) -> pathlib.Path:
    return tmp_path_factory.mktemp("wasm-build")


@pytest.fixture(scope="session")
def wat_wasm(build_dir: pathlib.Path) -> pathlib.Path:
    out = build_dir / "threshold-wat.wasm"
    out.write_bytes(wasmtime.wat2wasm((SRC / "threshold.wat").read_text()))
    return out


@pytest.fixture(scope="session")
def c_wasm(build_dir: pathlib.Path) -> pathlib.Path:
    clang = shutil.which("clang")
    if clang is None:
        pytest.fail("clang not found: the C example needs `apt-get install -y clang lld`")
    out = build_dir / "threshold-c.wasm"
    cmd = [
        clang, "--target=wasm32", "-O2", "-ffreestanding", "-nostdlib", "-fno-builtin",
        "-Wall", "-Wextra", "-Werror", "-Wl,--no-entry", "-o", str(out), str(SRC / "threshold.c"),
    ]  # fmt: skip
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        pytest.fail(f"building threshold.c failed (is lld installed?):\n{proc.stderr}")
    assert out.read_bytes().startswith(b"\0asm")
    return out


@pytest.fixture(scope="session")
def chaos_wasm(build_dir: pathlib.Path) -> pathlib.Path:
    out = build_dir / "chaos.wasm"
    out.write_bytes(wasmtime.wat2wasm((SRC / "chaos.wat").read_text()))
    return out


@pytest.fixture(autouse=True)
def _clear_collected() -> None:
    mechaway.testing.nodes.COLLECTED.clear()


# --- the engine and the flows-dir watcher, in-process (runtime, flow, nodes, api tests) ---
@pytest_asyncio.fixture
async def engine() -> AsyncIterator[Engine]:
    """An engine with a short stop timeout, stopped (every flow) after the test."""
    e = Engine(stop_timeout=2.0)
    try:
        yield e
    finally:
        await e.stop()


@pytest_asyncio.fixture
async def watcher(tmp_path: pathlib.Path) -> AsyncIterator[FlowDirWatcher]:
    """A flows-dir watcher on ``tmp_path/flows`` (scans only when the test asks)."""
    db = Database(tmp_path / "mechaway.db")
    db.open()
    engine = Engine(stop_timeout=2.0)
    flows = tmp_path / "flows"
    flows.mkdir()
    w = FlowDirWatcher(FlowManager(engine, FlowStore(db)), flows, interval=3600)
    try:
        yield w
    finally:
        await w.stop()
        await engine.stop()
        await db.close()
