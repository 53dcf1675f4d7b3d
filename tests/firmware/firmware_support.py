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


