"""A damaged or truncated database at start: one clear line, nothing touched, and the
documented recovery (move the file set aside, ``sqlite3 .recover``) gets the data back."""

from __future__ import annotations

import asyncio
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from mechaway.store.db import Database
from mechaway.store.outbox import Outbox
from mechaway.testing.daemon import free_port

from .test_crash import ROOT
from .test_crash import daemon_env as clean_env


async def _make_db(path: Path, n: int = 5000) -> None:
    db = Database(path, commit_interval=0.001)
    db.open()
    ob = Outbox.of(db)
    await asyncio.gather(*[ob.append("t", {"n": i, "pad": "x" * 40}) for i in range(n)])
    await db.close()


def _start(data: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "mechaway", "start", "--data-dir", str(data),
         "--listen", f"127.0.0.1:{free_port()}"],
        check=False, cwd=ROOT, env=clean_env(), capture_output=True, text=True, timeout=60,
    )  # fmt: skip


def _assert_refused(proc: subprocess.CompletedProcess[str], db: Path) -> str:
    assert proc.returncode == 1, proc.stderr
    lines = [ln for ln in proc.stderr.splitlines() if ln.startswith("mechaway:")]
    assert len(lines) == 1, proc.stderr
    line = lines[0]
    assert str(db) in line and "damaged" in line and "Nothing was changed" in line
    assert "-wal and -shm" in line and "mechaway.store.salvage" in line
    assert "Traceback" not in proc.stderr
    return line


@pytest.mark.asyncio
async def test_garbage_file_refused_untouched(tmp_path: Path) -> None:
    db = tmp_path / "mechaway.db"
    garbage = b"definitely not sqlite " * 500
    db.write_bytes(garbage)
    proc = await asyncio.to_thread(_start, tmp_path)
    _assert_refused(proc, db)
    assert db.read_bytes() == garbage


@pytest.mark.asyncio
async def test_truncated_file_refused_untouched(tmp_path: Path) -> None:
    db = tmp_path / "mechaway.db"
    await _make_db(db)
    data = db.read_bytes()
    db.write_bytes(data[: len(data) // 2])
    proc = await asyncio.to_thread(_start, tmp_path)
    _assert_refused(proc, db)
    assert db.read_bytes() == data[: len(data) // 2]


@pytest.mark.asyncio
async def test_documented_recovery_salvages_the_readable_rows(tmp_path: Path) -> None:
    db = tmp_path / "mechaway.db"
    await _make_db(db)
    data = bytearray(db.read_bytes())
    data[30 * 4096 : 32 * 4096] = b"\xa5" * (2 * 4096)  # two damaged pages mid-file
    db.write_bytes(bytes(data))
    proc = await asyncio.to_thread(_start, tmp_path)
    _assert_refused(proc, db)

    # the recovery, exactly as the message says
    script = (
        'for f in mechaway.db*; do mv "$f" "bad-$f"; done; '
        f"{sys.executable} -m mechaway.store.salvage bad-mechaway.db mechaway.db"
    )
    out = await asyncio.to_thread(
        subprocess.run, ["sh", "-c", script], cwd=tmp_path, env=clean_env(),
        capture_output=True, text=True, check=True, timeout=60,
    )  # fmt: skip
    assert "outbox" in out.stdout and "PARTIAL" in out.stdout
    assert (tmp_path / "bad-mechaway.db").read_bytes() == bytes(data)  # the original is kept
    d = Database(db)
    d.open()  # opens cleanly now
    try:
        ob = Outbox.of(d)
        kept = [e.seq for e in ob.peek(0, 10_000)]
        assert 4000 < len(kept) < 5000  # only what the two damaged pages held is lost
        assert kept[0] == 1 and kept[-1] == 5000  # both sides of the damage
        assert ob.state()["epoch"] == epoch_of(tmp_path / "bad-mechaway.db")
        assert await ob.append("t", "after recovery") == 5001  # seq stays monotonic
    finally:
        await d.close()


def epoch_of(path: Path) -> str:
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        return str(conn.execute("SELECT epoch FROM outbox_state").fetchone()[0])
    finally:
        conn.close()


@pytest.mark.asyncio
async def test_salvage_output_is_a_healthy_database(tmp_path: Path) -> None:
    """The result passes SQLite's full integrity check."""
    db = tmp_path / "bad.db"
    await _make_db(db, 500)
    proc = await asyncio.to_thread(
        subprocess.run, [sys.executable, "-m", "mechaway.store.salvage", str(db),
                         str(tmp_path / "new.db")],
        cwd=ROOT, env=clean_env(), capture_output=True, text=True, check=True, timeout=60,
    )  # fmt: skip
    assert "PARTIAL" not in proc.stdout
    check = await asyncio.to_thread(
        subprocess.run, ["sqlite3", str(tmp_path / "new.db"), "PRAGMA integrity_check;"],
        capture_output=True, text=True, check=True, timeout=60,
    )  # fmt: skip
    assert check.stdout.strip() == "ok"
