"""Running the ``mechaway`` command as a user would, for tests: one subprocess, and the
one-line error every user mistake must be."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

from mechaway.testing.daemon import clean_env


def mechaway(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "mechaway", *args],
        check=False,
        capture_output=True,
        text=True,
        timeout=60,
        env=env or clean_env(),
    )


#: a broken entry-point plugin installed in the environment is reported on stderr by design
#: (tests/nodes installs one on purpose); that report is not the command's own output
PLUGIN_REPORT = re.compile(r"^plugin \S+ \(.*\) skipped: ")


def stderr_lines(proc: subprocess.CompletedProcess[str]) -> list[str]:
    return [ln for ln in proc.stderr.strip().splitlines() if not PLUGIN_REPORT.match(ln)]


def assert_one_line_error(proc: subprocess.CompletedProcess[str], *needles: str) -> str:
    assert proc.returncode == 1, proc
    assert "Traceback" not in proc.stderr
    lines = stderr_lines(proc)
    assert len(lines) == 1, proc.stderr
    for n in needles:
        assert n in lines[0], lines[0]
    return lines[0]


def write(path: Path, data: Any) -> Path:
    path.write_text(data if isinstance(data, str) else json.dumps(data))
    return path
