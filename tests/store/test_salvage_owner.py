"""Salvage run as root in the service's data directory (the README's recovery recipe)
leaves a database the service's user owns, with the damaged file's mode (issue 12, 6)."""

from __future__ import annotations

import asyncio
import os
import sqlite3
from pathlib import Path

from mechaway.store import salvage
from mechaway.store.db import Database


def test_the_salvaged_file_belongs_to_the_data_directorys_owner(tmp_path: Path) -> None:
    data = tmp_path / "var-lib-mechaway"
    data.mkdir()
    bad = data / "bad-mechaway.db"
    db = Database(bad)
    db.open()
    asyncio.run(db.close())
    os.chmod(bad, 0o640)
    # the service's user owns its data directory; salvage runs as root (when we are root:
    # another uid for the directory; else our own)
    owner = (65534, 65534) if os.geteuid() == 0 else (os.getuid(), os.getgid())
    os.chown(data, *owner)
    new = data / "mechaway.db"
    assert salvage.main([str(bad), str(new)]) == 0
    files = [p for p in data.iterdir() if p.name.startswith("mechaway.db")]
    assert files and new in files
    for f in files:
        st = f.stat()
        assert (st.st_uid, st.st_gid) == owner, f"{f.name} owned by {st.st_uid}:{st.st_gid}"
        assert st.st_mode & 0o777 == 0o640, f"{f.name} mode {st.st_mode & 0o777:o}"
    with sqlite3.connect(new) as conn:  # and it is a database the daemon opens
        assert conn.execute("PRAGMA quick_check").fetchone() == ("ok",)
