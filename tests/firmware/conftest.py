"""Builds the firmware-side code once per test session (into pytest's temp dir)."""

from __future__ import annotations

import pathlib
import subprocess
from collections.abc import Iterator

import pytest
from firmware_support import LIBRARY, ROOT, LineProcess, Simavr, build_avr, tool


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


#: the firmware as the simavr tests build it: readings every 100 ms, heartbeats every 1 s
TEST_DEFINES = "-DREADING_MS=100 -DHEARTBEAT_MS=1000"


@pytest.fixture(scope="session")
def avr_build(tmp_path_factory: pytest.TempPathFactory) -> dict[str, pathlib.Path]:
    """The bridge sketch built for the ATmega328P in both framings, and the harness."""
    build = tmp_path_factory.mktemp("avr")
    out = {framing: build_avr(build, framing, TEST_DEFINES) for framing in ("line", "cobs")}
    out["harness"] = build / "simavr_uart"
    return out


@pytest.fixture(params=["line", "cobs"])
def simavr(request: pytest.FixtureRequest, avr_build: dict[str, pathlib.Path]) -> Iterator[Simavr]:
    """One simulated Uno running the bridge in the parametrised framing."""
    sim = Simavr(avr_build["harness"], avr_build[request.param], request.param)
    yield sim
    sim.close()
