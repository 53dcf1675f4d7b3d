"""Builds the firmware-side code once per test session (into pytest's temp dir)."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator

import pytest
from firmware_support import LIBRARY, ROOT, LineProcess, tool


@pytest.fixture(scope="session")
def host_bridge(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LineProcess]:
    """tests/firmware/host_bridge.cpp built with the host g++ (with ASan and UBSan)."""
    exe = tmp_path_factory.mktemp("host-bridge") / "host_bridge"
    subprocess.run(
        [tool("g++"), "-std=c++11", "-Wall", "-Wextra", "-Werror", "-O1", "-g",
         "-fsanitize=address,undefined", "-fno-sanitize-recover=undefined",
         f"-I{LIBRARY}", "-o", str(exe), str(ROOT / "tests" / "firmware" / "host_bridge.cpp")],
        check=True,
    )
    helper = LineProcess([str(exe)])
    yield helper
    helper.close()
