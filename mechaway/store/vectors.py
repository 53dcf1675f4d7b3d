"""Vector store: embeddings in the same SQLite file, k-nearest-neighbour by cosine or L2.

Vectors are float32 BLOBs (little-endian, the layout sqlite-vec reads), grouped in named
collections of one dimension each. A query is a brute-force scan of the collection in
SQL: ``ORDER BY vec_distance_cosine(vec, :q) LIMIT k``. Where the ``sqlite-vec``
package is installed, its C functions do the distance (~10x faster): loaded with
``enable_load_extension``, or, where Python's ``sqlite3`` lacks it (CPython built
without ``--enable-loadable-sqlite-extensions``: python.org, pyenv, Docker builds),
registered through ``sqlite3_auto_extension`` of the same libsqlite3. Where neither
works (no wheel: 32-bit ARM; SQLite linked statically) the same two SQL functions are
provided in Python (``math.dist`` on ``array('f')``, no numpy). Same storage, same SQL,
same results.

Queries run on a worker thread with their own connection: they never stall the loop.
Writes are coalesced into one op per tick, ``synchronous=NORMAL``.
"""

from __future__ import annotations

import asyncio
import importlib
import logging
import math
import sqlite3
import threading
import time
from array import array
from dataclasses import dataclass
from typing import Any, Literal

import orjson

from mechaway.store.batching import Coalescer, attach, attached
from mechaway.store.db import Database, register_migration
from mechaway.store.encode import show, to_json

log = logging.getLogger("mechaway.store.vectors")

register_migration(
    203,
    """
    CREATE TABLE vector_collections (
        id INTEGER PRIMARY KEY,
        name TEXT NOT NULL UNIQUE,
        dim INTEGER NOT NULL,
        count INTEGER NOT NULL DEFAULT 0,
        created_at REAL NOT NULL
    );
    CREATE TABLE vectors (
        id INTEGER PRIMARY KEY,
        collection_id INTEGER NOT NULL,
        key TEXT,
        vec BLOB NOT NULL,
        meta BLOB,
        ts REAL NOT NULL
    );
    CREATE UNIQUE INDEX vectors_by_key ON vectors(collection_id, key);
    """,
)

Metric = Literal["cosine", "l2"]
MAX_DIM = 4096
#: the largest finite float32
_F32 = 3.4028234663852886e38


class VectorError(ValueError):
    """A vector that cannot be stored or searched (wrong dimension, not numbers)."""


@dataclass(frozen=True, slots=True)
class Neighbor:
    """One search hit: the stored key (or row id), its distance, its metadata."""

    key: str
    distance: float
    meta: Any

    def as_dict(self) -> dict[str, Any]:
        return {"key": self.key, "distance": self.distance, "meta": self.meta}


def to_blob(vector: Any) -> bytes:
    """A list of finite numbers -> float32 BLOB; ``VectorError`` otherwise."""
    if not isinstance(vector, list | tuple) or not vector:
        raise VectorError("a vector is a non-empty list of numbers")
    if len(vector) > MAX_DIM:
        raise VectorError(f"vector has {len(vector)} dimensions (at most {MAX_DIM})")
    for x in vector:
        # float32 range: beyond it ``array`` stores inf (NaN is outside any range too)
        if isinstance(x, bool) or not isinstance(x, int | float) or not -_F32 <= x <= _F32:
            raise VectorError(f"vector element {show(x)} is not a finite float32 number")
    return array("f", vector).tobytes()


# -- the distance functions without the extension ----------------------------------------------
def _l2(a: bytes | None, b: bytes | None) -> float | None:
    if a is None or b is None:
        return None
    return math.dist(array("f", a), array("f", b))


class _Cosine:
    """``1 - cos(a, b)`` from C-speed ``math.dist``/``hypot`` (the query vector is cached)."""

    def __init__(self) -> None:
        self._qb = b""
        self._q: array[float] = array("f")
        self._qn = 0.0

    def __call__(self, a: bytes | None, b: bytes | None) -> float | None:
        if a is None or b is None:
            return None
        if b != self._qb:
            self._qb = b
            self._q = array("f", b)
            self._qn = math.hypot(*self._q)
        va = array("f", a)
        na = math.hypot(*va)
        qn = self._qn
        if na == 0.0 or qn == 0.0:
            return 1.0
        d = math.dist(va, self._q)
        dot = (na * na + qn * qn - d * d) / 2.0
        return max(0.0, 1.0 - dot / (na * qn))


def _libsqlite3_path() -> str | None:
    """The libsqlite3 file this process's ``sqlite3`` module runs on (Linux), if shared."""
    try:
        with open("/proc/self/maps") as f:
            for line in f:
                path = line.rsplit(" ", 1)[-1].strip()
                if "/libsqlite3.so" in path:
                    return path
    except OSError:
        pass
    return None


_auto_registered: bool | None = None


def _register_auto_extension(sqlite_vec: Any) -> bool:
    """Hand sqlite-vec's entry point to ``sqlite3_auto_extension`` of the very libsqlite3
    the ``sqlite3`` module uses: every connection opened afterwards has its functions.

    For CPython built without ``--enable-loadable-sqlite-extensions`` (no
    ``enable_load_extension``), where the library itself can load extensions. Only a
    documented SQLite call; nothing happens unless the library versions match.
    """
    global _auto_registered
    if _auto_registered is not None:
        return _auto_registered
    _auto_registered = False
    lib_path = _libsqlite3_path()
    if lib_path is None:
        return False
    try:
        import ctypes

        lib = ctypes.CDLL(lib_path)
        lib.sqlite3_libversion.restype = ctypes.c_char_p
        if lib.sqlite3_libversion().decode() != sqlite3.sqlite_version:
            return False
        ext = ctypes.CDLL(f"{sqlite_vec.loadable_path()}.so")
        lib.sqlite3_auto_extension.argtypes = [ctypes.c_void_p]
        rc = lib.sqlite3_auto_extension(ctypes.cast(ext.sqlite3_vec_init, ctypes.c_void_p))
        _auto_registered = rc == 0
    except (OSError, AttributeError) as err:
        log.debug("sqlite-vec auto extension not registered: %s", err)
    return _auto_registered


def open_query_connection(path: str) -> tuple[sqlite3.Connection, str]:
    """A read connection with ``vec_distance_cosine``/``vec_distance_l2``; and which backend."""
    try:
        sqlite_vec: Any = importlib.import_module("sqlite_vec")
    except ImportError:
        sqlite_vec = None
    loadable = hasattr(sqlite3.Connection, "enable_load_extension")
    if sqlite_vec is not None and not loadable:
        _register_auto_extension(sqlite_vec)
    conn = sqlite3.connect(path, check_same_thread=False, timeout=30.0)
    conn.execute("PRAGMA query_only=1")
    if sqlite_vec is not None and loadable:
        try:
            conn.enable_load_extension(True)
            try:
                sqlite_vec.load(conn)
            finally:
                conn.enable_load_extension(False)
        except (AttributeError, sqlite3.Error) as err:
            log.debug("sqlite-vec not loadable (%s)", err)
    try:
        version = conn.execute("SELECT vec_version()").fetchone()[0]
        return conn, f"sqlite-vec {version}"
    except sqlite3.Error:
        pass
    conn.create_function("vec_distance_l2", 2, _l2, deterministic=True)
    conn.create_function("vec_distance_cosine", 2, _Cosine(), deterministic=True)
    return conn, "python"


def python_query_connection(path: str) -> sqlite3.Connection:
    """A read connection with the Python distance functions (tests compare backends)."""
    conn = sqlite3.connect(path, check_same_thread=False, timeout=30.0)
    conn.execute("PRAGMA query_only=1")
    conn.create_function("py_vec_distance_l2", 2, _l2, deterministic=True)
    conn.create_function("py_vec_distance_cosine", 2, _Cosine(), deterministic=True)
    return conn


@dataclass(frozen=True, slots=True)
class _Add:
    collection: str
    blob: bytes
    dim: int
    key: str | None
    meta: bytes | None
    max_vectors: int | None


class VectorStore:
    """The vector collections of one ``Database`` (``VectorStore.of(db)``)."""

    def __init__(self, db: Database) -> None:
        self.db = db
        self._co: Coalescer[_Add, int] = Coalescer(db, self._add_op, durable=False)
        self._lock = threading.Lock()
        self._conn: sqlite3.Connection | None = None
        self.backend = ""
        self.added = 0
        self.queries = 0
        db.before_close.append(self.close)

    @classmethod
    def of(cls, db: Database) -> VectorStore:
        return attached(db, cls) or attach(db, cls(db))

    @classmethod
    def existing(cls, db: Database) -> VectorStore | None:
        return attached(db, cls)

    # -- writes -----------------------------------------------------------------------------
    def add(
        self,
        collection: str,
        vector: Any,
        *,
        key: str | None = None,
        meta: Any = None,
        max_vectors: int | None = None,
    ) -> asyncio.Future[int]:
        """Store a vector (replacing the one with the same ``key``); resolves to its row id.

        Beyond ``max_vectors`` in the collection the oldest are deleted.
        """
        blob = to_blob(vector)
        m = None if meta is None else to_json(meta, "metadata of a vector in %s", collection)
        self.added += 1
        return self._co.add(_Add(collection, blob, len(blob) // 4, key, m, max_vectors))

    @staticmethod
    def _add_op(conn: sqlite3.Connection, items: list[_Add]) -> list[Any]:
        out: list[Any] = []
        now = time.time()
        for it in items:
            row = conn.execute(
                "SELECT id, dim FROM vector_collections WHERE name = ?", (it.collection,)
            ).fetchone()
            if row is None:
                cid = conn.execute(
                    "INSERT INTO vector_collections(name, dim, created_at) VALUES (?,?,?)",
                    (it.collection, it.dim, now),
                ).lastrowid
            elif row[1] != it.dim:
                out.append(
                    VectorError(
                        f"collection {it.collection!r} holds {row[1]}-d vectors, got {it.dim}"
                    )
                )
                continue
            else:
                cid = row[0]
            old = None
            if it.key is not None:
                old = conn.execute(
                    "SELECT id FROM vectors WHERE collection_id = ? AND key = ?", (cid, it.key)
                ).fetchone()
            if old is not None:
                conn.execute(
                    "UPDATE vectors SET vec = ?, meta = ?, ts = ? WHERE id = ?",
                    (it.blob, it.meta, now, old[0]),
                )
                out.append(int(old[0]))
                continue
            vid = conn.execute(
                "INSERT INTO vectors(collection_id, key, vec, meta, ts) VALUES (?,?,?,?,?)",
                (cid, it.key, it.blob, it.meta, now),
            ).lastrowid
            (count,) = conn.execute(
                "UPDATE vector_collections SET count = count + 1 WHERE id = ? RETURNING count",
                (cid,),
            ).fetchone()
            if it.max_vectors is not None and count > it.max_vectors:
                extra = count - it.max_vectors
                conn.execute(
                    "DELETE FROM vectors WHERE id IN (SELECT id FROM vectors "
                    "WHERE collection_id = ? ORDER BY id LIMIT ?)",
                    (cid, extra),
                )
                conn.execute(
                    "UPDATE vector_collections SET count = count - ? WHERE id = ?", (extra, cid)
                )
            out.append(int(vid or 0))
        return out

    # -- search -----------------------------------------------------------------------------
    async def query(
        self, collection: str, vector: Any, *, k: int = 5, metric: Metric = "cosine"
    ) -> list[Neighbor]:
        """The ``k`` stored vectors nearest to ``vector``, nearest first (worker thread)."""
        if k < 1:
            raise VectorError("k must be >= 1")
        if metric not in ("cosine", "l2"):
            raise VectorError("metric must be cosine or l2")
        blob = to_blob(vector)
        self.queries += 1
        return await asyncio.to_thread(self._query, collection, blob, k, metric)

    def _query(self, collection: str, blob: bytes, k: int, metric: Metric) -> list[Neighbor]:
        with self._lock:
            if self._conn is None:
                self._conn, self.backend = open_query_connection(str(self.db.path))
            conn = self._conn
            row = conn.execute(
                "SELECT id, dim FROM vector_collections WHERE name = ?", (collection,)
            ).fetchone()
            if row is None:
                return []
            if row[1] != len(blob) // 4:
                raise VectorError(
                    f"collection {collection!r} holds {row[1]}-d vectors, got {len(blob) // 4}"
                )
            # a distance float32 arithmetic cannot give (NaN: huge elements overflow) is
            # NULL in SQL, which sorts first: it goes last, as an infinite distance
            rows = conn.execute(
                f"SELECT id, key, meta, vec_distance_{metric}(vec, ?) AS d FROM vectors "
                "WHERE collection_id = ? ORDER BY d IS NULL, d LIMIT ?",
                (blob, row[0], k),
            ).fetchall()
        return [
            Neighbor(str(r[1]) if r[1] is not None else str(r[0]),
                     math.inf if r[3] is None else float(r[3]),
                     None if r[2] is None else orjson.loads(r[2]))
            for r in rows
        ]  # fmt: skip

    def count(self, collection: str) -> int:
        rows = self.db.read("SELECT count FROM vector_collections WHERE name = ?", (collection,))
        return int(rows[0][0]) if rows else 0

    def close(self) -> None:
        """Close the query connection (the next query opens a new one)."""
        with self._lock:
            if self._conn is not None:
                self._conn.close()
                self._conn = None

    async def maintain(self) -> None:
        """Nothing periodic: bounds apply on insert."""

    def status(self) -> dict[str, Any]:
        return {"added": self.added, "queries": self.queries, "backend": self.backend or None}
