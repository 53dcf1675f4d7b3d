"""Tables as the PostgreSQL nodes see them: names quoted, columns typed, values converted.

Pure (no I/O, no asyncpg): what enters SQL from outside is checked here. Identifiers
(a table, its schema, column names) are always quoted, so a name is taken exactly as
written (case-sensitive, as PostgreSQL stores it: an unquoted ``CREATE TABLE Grades``
stores ``grades``); values always travel as parameters or COPY data, never in SQL text.
Each column gets a converter from its type, so ``"87"`` fills an ``integer`` column and a
dict a ``jsonb`` one, and a value that does not fit is refused with the column's name.
"""

from __future__ import annotations

import datetime as dt
import decimal
import math
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import orjson

#: PostgreSQL's identifier length limit (NAMEDATALEN - 1), in bytes
MAX_IDENT = 63

Convert = Callable[[Any], Any]


class BadValue(ValueError):
    """A message value that does not fit its column."""


def check_ident(name: str, what: str = "name") -> str:
    """``name`` if PostgreSQL can hold it as an identifier; ``ValueError`` naming ``what``."""
    if not name:
        raise ValueError(f"{what} is empty")
    if "\x00" in name:
        raise ValueError(f"{what} {name!r} holds a NUL character")
    if len(name.encode()) > MAX_IDENT:
        raise ValueError(f"{what} {name[:80]!r} is longer than {MAX_IDENT} bytes")
    return name


def quote_ident(name: str) -> str:
    """``grades`` -> ``"grades"``, ``a"b`` -> ``"a""b"`` (checked first)."""
    check_ident(name)
    return '"' + name.replace('"', '""') + '"'


def split_table(table: str) -> tuple[str | None, str]:
    """``"grades"`` -> ``(None, "grades")``, ``"lab.grades"`` -> ``("lab", "grades")``: at
    most one dot, each part a valid identifier (no quoting syntax: names are exact)."""
    parts = table.split(".")
    if len(parts) > 2:
        raise ValueError(f"table {table!r}: give NAME or SCHEMA.NAME (one dot at most)")
    if len(parts) == 2:
        return check_ident(parts[0], "schema"), check_ident(parts[1], "table")
    return None, check_ident(parts[0], "table")


def qualified(schema: str | None, name: str) -> str:
    return f"{quote_ident(schema)}.{quote_ident(name)}" if schema else quote_ident(name)


# -- converters: a message value -> what asyncpg encodes for the column's type ----------------
def _int(v: Any) -> Any:
    if isinstance(v, bool):
        return int(v)
    if isinstance(v, int):
        return v
    if isinstance(v, float):
        if v.is_integer():
            return int(v)
        raise BadValue(f"{v!r} is not a whole number")
    if isinstance(v, str):
        try:
            return int(v.strip())
        except ValueError:
            raise BadValue(f"{v[:40]!r} is not a whole number") from None
    raise BadValue(f"expected a whole number, got {type(v).__name__}")


def _float(v: Any) -> Any:
    if isinstance(v, bool):
        return float(v)
    if isinstance(v, (int, float)):
        return float(v)
    if isinstance(v, str):
        try:
            return float(v.strip())
        except ValueError:
            raise BadValue(f"{v[:40]!r} is not a number") from None
    raise BadValue(f"expected a number, got {type(v).__name__}")


def _numeric(v: Any) -> Any:
    if isinstance(v, bool) or not isinstance(v, (int, float, str)):
        raise BadValue(f"expected a number, got {type(v).__name__}")
    try:
        return decimal.Decimal(str(v).strip())
    except decimal.InvalidOperation:
        raise BadValue(f"{str(v)[:40]!r} is not a number") from None


def _text(v: Any) -> Any:
    if isinstance(v, str):
        return v
    if isinstance(v, (bool, int, float)):
        return str(v).lower() if isinstance(v, bool) else str(v)
    raise BadValue(f"expected text, got {type(v).__name__} (use a json or jsonb column)")


_TRUE = {"true", "t", "yes", "on", "1"}
_FALSE = {"false", "f", "no", "off", "0"}


def _bool(v: Any) -> Any:
    if isinstance(v, bool):
        return v
    if isinstance(v, int) and v in (0, 1):
        return bool(v)
    if isinstance(v, str) and v.strip().lower() in _TRUE | _FALSE:
        return v.strip().lower() in _TRUE
    raise BadValue(f"{v!r:.40} is not a boolean")


def _json(v: Any) -> Any:
    try:
        return orjson.dumps(v).decode()
    except TypeError as err:
        raise BadValue(f"not JSON: {err}") from None


def _timestamp(tz: bool) -> Convert:
    def conv(v: Any) -> Any:
        if isinstance(v, bool):
            raise BadValue("expected epoch seconds or ISO 8601, got a boolean")
        if isinstance(v, (int, float)):
            if not math.isfinite(v):
                raise BadValue(f"{v!r} is not a time")
            try:
                t = dt.datetime.fromtimestamp(v, dt.UTC)
            except (OverflowError, OSError, ValueError):
                raise BadValue(f"{v!r} is out of range for a time") from None
            return t if tz else t.replace(tzinfo=None)
        if isinstance(v, str):
            try:
                t = dt.datetime.fromisoformat(v.strip())
            except ValueError:
                raise BadValue(f"{v[:40]!r} is not ISO 8601") from None
            if tz and t.tzinfo is None:
                t = t.replace(tzinfo=dt.UTC)  # naive means UTC, as the API's times do
            if not tz and t.tzinfo is not None:
                t = t.astimezone(dt.UTC).replace(tzinfo=None)
            return t
        raise BadValue(f"expected epoch seconds or ISO 8601, got {type(v).__name__}")

    return conv


def _date(v: Any) -> Any:
    if isinstance(v, str):
        try:
            return dt.date.fromisoformat(v.strip()[:10])
        except ValueError:
            raise BadValue(f"{v[:40]!r} is not a date (YYYY-MM-DD)") from None
    if isinstance(v, (int, float)) and not isinstance(v, bool):
        conv = _timestamp(True)(v)
        assert isinstance(conv, dt.datetime)
        return conv.date()
    raise BadValue(f"expected a date, got {type(v).__name__}")


def _uuid(v: Any) -> Any:
    try:
        return uuid.UUID(str(v))
    except ValueError:
        raise BadValue(f"{str(v)[:40]!r} is not a UUID") from None


def _bytea(v: Any) -> Any:
    if isinstance(v, str):
        return v.encode()
    raise BadValue(f"expected text for bytea, got {type(v).__name__}")


def _as_is(v: Any) -> Any:
    return v


#: ``pg_type.typname`` -> converter; other types take the value as it is (asyncpg says
#: what it cannot encode, which fails the row with the column's name)
CONVERTERS: dict[str, Convert] = {
    "int2": _int, "int4": _int, "int8": _int, "oid": _int,
    "float4": _float, "float8": _float, "numeric": _numeric,
    "text": _text, "varchar": _text, "bpchar": _text, "name": _text, "citext": _text,
    "bool": _bool, "json": _json, "jsonb": _json,
    "timestamptz": _timestamp(True), "timestamp": _timestamp(False), "date": _date,
    "uuid": _uuid, "bytea": _bytea,
}  # fmt: skip


#: ``pg_type.typname`` -> the Python type a value of it is stored as without conversion
FAST_TYPES: dict[str, type] = {
    "int2": int, "int4": int, "int8": int, "float4": float, "float8": float, "text": str,
    "varchar": str, "bpchar": str, "bool": bool,
}  # fmt: skip


@dataclass(frozen=True, slots=True)
class Column:
    name: str
    #: ``pg_type.typname`` (``int4``, ``timestamptz``...)
    typname: str
    #: ``format_type``: the SQL type as written (``numeric(5,2)``), for casts
    sqltype: str
    not_null: bool = False
    has_default: bool = False

    @property
    def convert(self) -> Convert:
        return CONVERTERS.get(self.typname, _as_is)


@dataclass(slots=True)
class Table:
    """One table as the database describes it (``pg_attribute``), in column order."""

    schema: str
    name: str
    columns: dict[str, Column] = field(default_factory=dict)
    #: columns of its primary key or unique constraints (each a tuple)
    unique: list[tuple[str, ...]] = field(default_factory=list)
    hypertable: bool = False

    @property
    def sql(self) -> str:
        return qualified(self.schema, self.name)

    def label(self) -> str:
        return f"{self.schema}.{self.name}"

    def require(self, names: Sequence[str], what: str) -> None:
        """``ValueError`` naming the first of ``names`` the table lacks (and what it has)."""
        for n in names:
            if n not in self.columns:
                have = ", ".join(self.columns) or "(none)"
                raise ValueError(f"{what} {n!r} is not a column of {self.label()} (it has: {have})")


def insert_sql(table: Table, columns: Sequence[str]) -> str:
    """``INSERT INTO t (a, b) VALUES ($1, $2)``: one row per execution."""
    cols = ", ".join(quote_ident(c) for c in columns)
    marks = ", ".join(f"${i}" for i in range(1, len(columns) + 1))
    return f"INSERT INTO {table.sql} ({cols}) VALUES ({marks})"


def upsert_sql(table: Table, columns: Sequence[str], key: Sequence[str]) -> str:
    """One statement for a whole batch: ``INSERT ... SELECT * FROM unnest($1::T[], ...)
    ON CONFLICT (key) DO UPDATE SET c = EXCLUDED.c`` (DO NOTHING when every column is key).
    Each parameter is one column's values; the batch must hold each key once."""
    cols = ", ".join(quote_ident(c) for c in columns)
    arrays = ", ".join(
        f"${i}::{table.columns[c].sqltype}[]" for i, c in enumerate(columns, start=1)
    )
    conflict = ", ".join(quote_ident(c) for c in key)
    rest = [c for c in columns if c not in key]
    if rest:
        sets = ", ".join(f"{quote_ident(c)} = EXCLUDED.{quote_ident(c)}" for c in rest)
        action = f"DO UPDATE SET {sets}"
    else:
        action = "DO NOTHING"
    return (
        f"INSERT INTO {table.sql} ({cols}) SELECT * FROM unnest({arrays}) "
        f"ON CONFLICT ({conflict}) {action}"
    )


def last_per_key(rows: list[tuple[Any, ...]], key_index: Sequence[int]) -> list[tuple[Any, ...]]:
    """The rows with each key once (its last row: an upsert's meaning), in order."""
    seen: dict[tuple[Any, ...], int] = {}
    for i, row in enumerate(rows):
        seen[tuple(row[k] for k in key_index)] = i
    if len(seen) == len(rows):
        return rows
    keep = sorted(seen.values())
    return [rows[i] for i in keep]


def columns_of(rows: list[tuple[Any, ...]], width: int) -> list[list[Any]]:
    """Rows -> one list per column (the arrays of an ``unnest`` upsert)."""
    if not rows:
        return [[] for _ in range(width)]
    return [list(col) for col in zip(*rows, strict=True)]
