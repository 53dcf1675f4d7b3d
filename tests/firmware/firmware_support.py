"""Shared by the firmware tests: paths, the vectors, tools, a line-oriented helper."""

from __future__ import annotations

import json
import pathlib
import shutil
import subprocess
from typing import Any

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]
BRIDGES = ROOT / "firmware-bridges"
LIBRARY = BRIDGES / "arduino" / "MechawayBridge" / "src"
VECTORS: dict[str, Any] = json.loads((BRIDGES / "test-vectors.json").read_text())


def tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        pytest.fail(f"{name} not found: .ci/run installs it (apt-get)")
    return path


class LineProcess:
    """A helper program answering one stdout line per stdin line."""

    def __init__(self, argv: list[str]) -> None:
        self.proc = subprocess.Popen(
            argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, bufsize=1
        )

    def ask(self, request: str) -> str:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write(request + "\n")
        self.proc.stdin.flush()
        answer = self.proc.stdout.readline()
        assert answer, f"helper died on {request[:80]!r} (rc={self.proc.poll()})"
        return answer.rstrip("\n")

    def close(self) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.close()
        assert self.proc.wait(timeout=10) == 0




def build_avr(build: pathlib.Path, framing: str, defines: str) -> pathlib.Path:
    """The Arduino bridge sketch for the ATmega328P, via firmware-bridges/arduino/Makefile."""
    tool("avr-g++")
    subprocess.run(
        ["make", "-s", "-j2", "-C", str(BRIDGES / "arduino"), f"BUILD={build}",
         f"FRAMING={framing}", f"DEFINES={defines}", "firmware", "sim"],
        check=True, stdout=subprocess.DEVNULL,
    )
    return build / f"bridge-{framing}.elf"


def avr_size(elf: pathlib.Path) -> tuple[int, int]:
    """(flash bytes, static RAM bytes) of an AVR ELF: .text + .data, .data + .bss."""
    out = subprocess.run([tool("avr-size"), "-A", str(elf)], check=True, capture_output=True,
                         text=True).stdout
    sizes = {}
    for row in out.splitlines():
        parts = row.split()
        if len(parts) == 3 and parts[1].isdigit():
            sizes[parts[0]] = int(parts[1])
    return sizes[".text"] + sizes[".data"], sizes[".data"] + sizes.get(".bss", 0)


class Simavr:
    """The simavr harness running one firmware; ``pty`` is its UART (one pty per run,
    so several may run at once)."""

    def __init__(self, harness: pathlib.Path, elf: pathlib.Path, framing: str) -> None:
        self.framing = framing
        self.proc = subprocess.Popen(
            [str(harness), str(elf)], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
            text=True,
        )
        assert self.proc.stdout is not None
        self.pty = ""
        for row in self.proc.stdout:
            if row.startswith("PTY "):
                self.pty = row.split()[1]
                break
        assert self.pty, f"simavr did not start (rc={self.proc.poll()})"

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
        self.proc.wait(timeout=10)
        if self.proc.stdout is not None:
            self.proc.stdout.close()
