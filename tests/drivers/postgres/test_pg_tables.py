"""What enters SQL from outside: names quoted, values converted per column type, the
statements built from them (pure: no database)."""

from __future__ import annotations

import datetime as dt
import decimal
import uuid

import pytest

from mechaway.drivers.postgres.tables import (
    BadValue,
    Column,
    Table,
    insert_sql,
    last_per_key,
    quote_ident,
    split_table,
    upsert_sql,
)


def test_names_are_quoted_exactly() -> None:
    assert quote_ident("grades") == '"grades"'
    assert quote_ident('x"; DROP TABLE t; --') == '"x""; DROP TABLE t; --"'
    assert split_table("lab.Grades") == ("lab", "Grades")
    assert split_table("grades") == (None, "grades")


@pytest.mark.parametrize(
    ("table", "says"),
    [("a.b.c", "one dot at most"), ("", "table is empty"), ("x" * 64, "longer than 63"),
     ("a\x00b", "NUL"), (".t", "schema is empty")],
)  # fmt: skip
def test_bad_table_names_are_refused(table: str, says: str) -> None:
    with pytest.raises(ValueError, match=says):
        split_table(table)


def col(name: str, typname: str, sqltype: str | None = None) -> Column:
    return Column(name, typname, sqltype or typname)


@pytest.mark.parametrize(
    ("typname", "given", "stored"),
    [
        ("int4", "87", 87), ("int4", 87.0, 87), ("int8", True, 1), ("float8", "2.5", 2.5),
        ("float4", 3, 3.0), ("numeric", 0.1, decimal.Decimal("0.1")), ("text", 12, "12"),
        ("text", False, "false"), ("bool", "on", True), ("bool", 0, False),
        ("jsonb", {"a": [1, None]}, '{"a":[1,null]}'), ("json", "x", '"x"'),
        ("timestamptz", 0, dt.datetime(1970, 1, 1, tzinfo=dt.UTC)),
        ("timestamptz", "2024-05-01T12:00:00", dt.datetime(2024, 5, 1, 12, tzinfo=dt.UTC)),
        ("timestamp", "2024-05-01T12:00:00+02:00", dt.datetime(2024, 5, 1, 10)),
        ("date", "2024-05-01T23:00:00", dt.date(2024, 5, 1)),
        ("uuid", "12345678-1234-5678-1234-567812345678",
         uuid.UUID("12345678-1234-5678-1234-567812345678")),
        ("bytea", "hi", b"hi"), ("_int4", [1, 2], [1, 2]),
    ],
)  # fmt: skip
def test_values_are_converted_for_their_column(typname: str, given: object,
                                                stored: object) -> None:  # fmt: skip
    assert col("c", typname).convert(given) == stored


@pytest.mark.parametrize(
    ("typname", "given", "says"),
    [
        ("int4", "eighty", "not a whole number"), ("int4", 1.5, "not a whole number"),
        ("float8", [1], "expected a number"), ("numeric", "1,5", "not a number"),
        ("text", {"a": 1}, "use a json or jsonb column"), ("bool", "maybe", "not a boolean"),
        ("timestamptz", float("nan"), "not a time"), ("timestamptz", 1e20, "out of range"),
        ("timestamptz", "yesterday", "not ISO 8601"), ("uuid", "42", "not a UUID"),
        ("jsonb", {1j}, "not JSON"),
    ],
)  # fmt: skip
def test_a_value_that_does_not_fit_is_refused(typname: str, given: object, says: str) -> None:
    with pytest.raises(BadValue, match=says):
        col("c", typname).convert(given)


def grades() -> Table:
    return Table("public", "grades", {
        "id": col("id", "int4", "integer"), "score": col("score", "numeric", "numeric(5,2)"),
        "grade": col("grade", "text"),
    }, [("id",)])  # fmt: skip


def test_statements_quote_every_name_and_take_values_as_parameters() -> None:
    t = grades()
    assert insert_sql(t, ("id", "grade")) == (
        'INSERT INTO "public"."grades" ("id", "grade") VALUES ($1, $2)'
    )
    assert upsert_sql(t, ("id", "score", "grade"), ["id"]) == (
        'INSERT INTO "public"."grades" ("id", "score", "grade") SELECT * FROM '
        "unnest($1::integer[], $2::numeric(5,2)[], $3::text[]) ON CONFLICT (\"id\") "
        'DO UPDATE SET "score" = EXCLUDED."score", "grade" = EXCLUDED."grade"'
    )
    assert upsert_sql(t, ("id",), ["id"]).endswith('ON CONFLICT ("id") DO NOTHING')


def test_an_upsert_batch_keeps_the_last_row_of_each_key_in_order() -> None:
    rows = [(1, "a"), (2, "b"), (1, "c"), (3, "d"), (2, "e")]
    assert last_per_key(rows, [0]) == [(1, "c"), (3, "d"), (2, "e")]
    same = [(1, "a"), (2, "b")]
    assert last_per_key(same, [0]) is same


def test_a_missing_column_is_named_with_what_the_table_has() -> None:
    with pytest.raises(ValueError, match=r"key 'student' is not a column of public.grades "
                       r"\(it has: id, score, grade\)"):  # fmt: skip
        grades().require(["id", "student"], "key")
