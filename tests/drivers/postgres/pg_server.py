"""The machine's PostgreSQL for tests: started if it is not running, a fresh database per
test (created, then dropped with the connections still open to it).

Expects a local server on 127.0.0.1:5432 that trusts the ``postgres`` user (Debian's
package with trust auth, as ``.ci/run`` sets up). ``PG_ADMIN_DSN`` names another.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import asyncpg  # type: ignore[import-untyped]

ADMIN_DSN = os.environ.get("PG_ADMIN_DSN", "postgresql://postgres@127.0.0.1:5432/postgres")


def ready() -> bool:
    if shutil.which("pg_isready") is None:
        return False
    return subprocess.run(["pg_isready", "-q", "-h", "127.0.0.1", "-p", "5432"],
                          check=False).returncode == 0  # fmt: skip


def ensure_server() -> None:
    """Start the machine's cluster when none answers (as .ci/run does); fail clearly."""
    if ready():
        return
    versions = sorted(Path("/etc/postgresql").glob("*")) if Path("/etc/postgresql").is_dir() else []
    if not versions or shutil.which("pg_ctlcluster") is None:
        raise RuntimeError("no PostgreSQL here: .ci/run installs and starts it")
    subprocess.run(["pg_ctlcluster", "--skip-systemctl-redirect", versions[-1].name, "main",
                    "start"], check=False)  # fmt: skip
    deadline = time.monotonic() + 30
    while not ready():
        if time.monotonic() > deadline:
            raise RuntimeError("PostgreSQL did not start within 30 s")
        time.sleep(0.2)


def dsn_of(name: str) -> str:
    base, _, _ = ADMIN_DSN.rpartition("/")
    return f"{base}/{name}"


@asynccontextmanager
async def fresh_database(prefix: str = "mw_test") -> AsyncIterator[str]:
    """A new, empty database; yields its DSN; dropped afterwards."""
    ensure_server()
    name = f"{prefix}_{os.getpid()}_{uuid.uuid4().hex[:8]}"
    admin = await asyncpg.connect(ADMIN_DSN)
    try:
        await admin.execute(f'CREATE DATABASE "{name}"')
    finally:
        await admin.close()
    try:
        yield dsn_of(name)
    finally:
        admin = await asyncpg.connect(ADMIN_DSN)
        try:
            await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        finally:
            await admin.close()


async def set_allowed(dsn: str, allowed: bool) -> None:
    """Let connections into the database, or refuse new ones and end those it has (the
    database is away for its clients: what a restart looks like to them)."""
    name = dsn.rpartition("/")[2]
    admin = await asyncpg.connect(ADMIN_DSN)
    try:
        flag = "true" if allowed else "false"
        await admin.execute(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS {flag}')
        if not allowed:
            await admin.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
                " WHERE datname = $1 AND pid <> pg_backend_pid()",
                name,
            )
    finally:
        await admin.close()


async def execute(dsn: str, sql: str, *args: object) -> str:
    conn = await asyncpg.connect(dsn)
    try:
        result: str = await conn.execute(sql, *args)
        return result
    finally:
        await conn.close()


async def fetch(dsn: str, sql: str, *args: object) -> list[dict[str, object]]:
    conn = await asyncpg.connect(dsn)
    try:
        return [dict(r) for r in await conn.fetch(sql, *args)]
    finally:
        await conn.close()


class Proxy:
    """A TCP proxy between a client and the server that the test controls: ``pause()``
    stops forwarding and leaves the sockets open (an unplugged cable: nothing closes,
    nothing answers), ``resume()`` forwards again, ``cut()`` closes every connection."""

    def __init__(self, target: tuple[str, int] = ("127.0.0.1", 5432)) -> None:
        import asyncio

        self.target = target
        self.port = 0
        self._server: asyncio.Server | None = None
        self._open = asyncio.Event()
        self._open.set()
        self._writers: set[asyncio.StreamWriter] = set()
        self._tasks: set[asyncio.Task[None]] = set()
        self._closing = False

    async def start(self) -> None:
        import asyncio

        self._server = await asyncio.start_server(self._client, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]

    def dsn(self, dsn: str) -> str:
        return dsn.replace("127.0.0.1:5432", f"127.0.0.1:{self.port}")

    def pause(self) -> None:
        self._open.clear()

    def resume(self) -> None:
        self._open.set()

    def cut(self) -> None:
        for w in list(self._writers):
            w.transport.abort()

    async def close(self) -> None:
        self._closing = True
        self._open.set()
        self.cut()
        if self._server is not None:
            self._server.close()
        for t in list(self._tasks):
            t.cancel()

    async def _client(self, reader: Any, writer: Any) -> None:
        import asyncio

        await self._open.wait()
        if self._closing:
            writer.close()
            return
        try:
            up_r, up_w = await asyncio.open_connection(*self.target)
        except OSError:
            writer.close()
            return
        self._writers |= {writer, up_w}
        for src, dst in ((reader, up_w), (up_r, writer)):
            task = asyncio.get_running_loop().create_task(self._pipe(src, dst))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _pipe(self, src: Any, dst: Any) -> None:
        try:
            while data := await src.read(65536):
                await self._open.wait()
                dst.write(data)
                await dst.drain()
        except (OSError, ConnectionError):
            pass
        finally:
            self._writers.discard(dst)
            dst.close()


class PrivateCluster:
    """A PostgreSQL server of the test's own (initdb into a temp dir, its own port), so a
    test can really stop and start it without touching the machine's shared server.
    Runs as the ``postgres`` user (initdb refuses root); trust auth on 127.0.0.1."""

    def __init__(self) -> None:
        import glob
        import socket
        import tempfile

        bins = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
        if not bins:
            raise RuntimeError("no PostgreSQL server binaries: .ci/run installs postgresql")
        self.bin = Path(bins[-1]).parent
        # in /tmp itself: pytest's own temp dirs are root's, closed to the postgres user
        self.root = Path(tempfile.mkdtemp(prefix="mechaway-pg-"))
        shutil.chown(self.root, "postgres", "postgres")
        self.dir = self.root / "data"
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = int(s.getsockname()[1])
        self._as_postgres(str(self.bin / "initdb"), "-D", str(self.dir), "-U", "postgres",
                          "--auth=trust", "-E", "UTF8", "--no-sync")  # fmt: skip

    @property
    def dsn(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    def _as_postgres(self, *cmd: str) -> None:
        out = subprocess.run(["runuser", "-u", "postgres", "--", *cmd], capture_output=True,
                             text=True, check=False)  # fmt: skip
        if out.returncode != 0:
            raise RuntimeError(f"{cmd[0]} failed: {out.stdout}{out.stderr}")

    def start(self) -> None:
        opts = f"-p {self.port} -k {self.root} -c listen_addresses=127.0.0.1 -c fsync=off"
        self._as_postgres(str(self.bin / "pg_ctl"), "-D", str(self.dir), "-o", opts, "-w",
                          "-l", str(self.dir / "server.log"), "start")  # fmt: skip

    def stop(self) -> None:
        """A fast shutdown: sessions are ended (57P01), then nothing listens."""
        self._as_postgres(str(self.bin / "pg_ctl"), "-D", str(self.dir), "-m", "fast", "-w",
                          "stop")  # fmt: skip

    def close(self) -> None:
        """Stop it if it runs; delete its files."""
        subprocess.run(["runuser", "-u", "postgres", "--", str(self.bin / "pg_ctl"), "-D",
                        str(self.dir), "-m", "immediate", "stop"],
                       capture_output=True, check=False)  # fmt: skip
        shutil.rmtree(self.root, ignore_errors=True)
