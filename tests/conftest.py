"""Suite-wide fixtures: every async test runs on a uvloop event loop."""

from __future__ import annotations

import pathlib
import shutil
import subprocess
from collections.abc import Callable, Mapping
from typing import Any

import pytest
import uvloop
import wasmtime

import mechaway.testing.nodes


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
