"""PostgresNode and PostgresQueryNode in flows against the machine's PostgreSQL (a fresh
database per test): insert, COPY, upsert, rows the database refuses, a missing table, a
database that goes away with rows held (bounded) and written when it is back, queries."""

from __future__ import annotations

import asyncio
import sys
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "drivers" / "postgres"))
from pg_server import execute, fetch, fresh_database, set_allowed

from mechaway.drivers.base import Connections, parse_sections
from mechaway.errors import FlowError
from mechaway.flow.validate import validate
from mechaway.nodes.context import Services
from mechaway.runtime.engine import Engine
from mechaway.testing.flows import deploy, got, single, stats

FAST = {"reconnect_min": 0.05, "reconnect_max": 0.3, "ping_interval": 0.2}


async def until(cond: Callable[[], Any], timeout: float = 15.0, what: str = "") -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what or cond}")
        await asyncio.sleep(0.02)


class Rig:
    def __init__(self, dsn: str, engine: Engine, conns: Connections) -> None:
        self.dsn, self.engine, self.conns = dsn, engine, conns

    async def rows(self, sql: str) -> list[dict[str, Any]]:
        return await fetch(self.dsn, sql)

    async def count(self, table: str = "grades") -> int:
        return int((await self.rows(f"SELECT count(*) AS n FROM {table}"))[0]["n"])

    def send(self, fid: str, *payloads: Any, **extra: Any) -> None:
        for p in payloads:
            self.engine.inject(fid, "n", {"payload": p, "topic": "t", "ts": 1.7e9, **extra})


@pytest_asyncio.fixture
async def rig() -> AsyncIterator[Rig]:
    async with fresh_database() as dsn:
        await execute(dsn, "CREATE TABLE grades (id int PRIMARY KEY, score numeric(5,1),"
                      " grade text, at timestamptz)")  # fmt: skip
        conns = Connections(parse_sections({"postgres": {"default": {"dsn": dsn, **FAST}}}))
        engine = Engine(Services(drivers=conns), stop_timeout=5.0)
        try:
            yield Rig(dsn, engine, conns)
        finally:
            await set_allowed(dsn, True)
            await engine.stop()
            await conns.close()


def pg(fid: str, **params: Any) -> dict[str, Any]:
    return single(fid, "PostgresNode", {"table": "grades", **params}, ports=("error",))


@pytest.mark.asyncio
async def test_few_rows_are_inserted_and_many_go_through_copy(rig: Rig) -> None:
    await deploy(rig.engine, pg("f1", batch_size=500, flush_interval=0.05, copy_min_rows=32,
                                queue_size=5000))
    rig.send("f1", *({"id": i, "score": i / 2, "grade": "B"} for i in range(5)))
    await until(lambda: stats(rig.engine, "f1", "n")["written"] == 5, what="5 rows")
    assert stats(rig.engine, "f1", "n")["copies"] == 0  # 5 < copy_min_rows: INSERTs
    rig.send("f1", *({"id": i, "score": "99.5", "grade": "A"} for i in range(5, 2005)))
    await until(lambda: stats(rig.engine, "f1", "n")["written"] == 2005, what="2005 rows")
    st = stats(rig.engine, "f1", "n")
    assert st["copies"] >= 4 and st["batches"] >= 5 and st["pending"] == 0
    assert st["state"] == "writing" and st["errors"] == 0
    assert await rig.count() == 2005
    row = (await rig.rows("SELECT score, grade FROM grades WHERE id = 2004"))[0]
    assert float(row["score"]) == 99.5 and row["grade"] == "A"
    conn = rig.conns.status()["postgres.default"]
    assert conn["counters"]["rows"] == 2005 and conn["counters"]["copies"] == st["copies"]


@pytest.mark.asyncio
async def test_an_upsert_updates_by_key_and_keeps_the_last_of_a_batch(rig: Rig) -> None:
    await execute(rig.dsn, "INSERT INTO grades VALUES (1, 10, 'F', NULL)")
    await deploy(rig.engine, pg("f2", mode="upsert", key=["id"], flush_interval=0.05))
    rig.send("f2", {"id": 1, "score": 50, "grade": "D"}, {"id": 2, "score": 60, "grade": "C"},
             {"id": 1, "score": 95, "grade": "A"})  # fmt: skip
    await until(lambda: stats(rig.engine, "f2", "n")["written"] == 3, what="the batch")
    rows = await rig.rows("SELECT id, score, grade FROM grades ORDER BY id")
    assert [(r["id"], float(r["score"]), r["grade"]) for r in rows] == [(1, 95.0, "A"),
                                                                       (2, 60.0, "C")]


@pytest.mark.asyncio
async def test_columns_from_message_paths_and_the_message_time(rig: Rig) -> None:
    await deploy(rig.engine, pg("f3", columns={"id": "payload.n", "grade": "topic"},
                                time_column="at", flush_interval=0.05))  # fmt: skip
    rig.send("f3", {"n": 7}, {"n": 8})
    await until(lambda: stats(rig.engine, "f3", "n")["written"] == 2, what="2 rows")
    rows = await rig.rows("SELECT id, grade, extract(epoch FROM at) AS at FROM grades"
                          " ORDER BY id")  # fmt: skip
    assert [(r["id"], r["grade"], float(r["at"])) for r in rows] == [(7, "t", 1.7e9),
                                                                     (8, "t", 1.7e9)]
    assert stats(rig.engine, "f3", "n")["hypertable"] is False  # no TimescaleDB here


STAND_IN = """
CREATE SCHEMA timescaledb_information;
CREATE TABLE ts_calls (rel regclass, col name, if_not_exists boolean, migrate_data boolean);
CREATE VIEW timescaledb_information.hypertables AS
  SELECT n.nspname AS hypertable_schema, c.relname AS hypertable_name FROM ts_calls t
  JOIN pg_class c ON c.oid = t.rel JOIN pg_namespace n ON n.oid = c.relnamespace;
CREATE FUNCTION create_hypertable(relation regclass, time_column_name name,
    if_not_exists boolean DEFAULT false, migrate_data boolean DEFAULT false)
  RETURNS void LANGUAGE sql AS
  $$ INSERT INTO ts_calls VALUES (relation, time_column_name, if_not_exists, migrate_data) $$;
"""


@pytest.mark.asyncio
async def test_a_hypertable_is_made_when_timescaledb_is_there(rig: Rig) -> None:
    """TimescaleDB is not packaged for Debian 12, so the database gets a stand-in with its
    create_hypertable signature and hypertables view, and the driver is told the extension
    is installed (what pg_extension says on a server that has it)."""
    await execute(rig.dsn, STAND_IN)
    drv = await rig.conns.get("postgres", "default")
    assert await drv.wait_connected(10)
    assert drv.timescaledb is None  # detected: not installed here
    drv._link.timescaledb = "2.14.2"
    await deploy(rig.engine, pg("fh", columns={"id": "payload.id"}, time_column="at",
                                flush_interval=0.05))  # fmt: skip
    rig.send("fh", {"id": 1})
    await until(lambda: stats(rig.engine, "fh", "n")["written"] == 1, what="the row")
    assert stats(rig.engine, "fh", "n")["hypertable"] is True
    calls = await rig.rows("SELECT rel::text AS rel, col, if_not_exists, migrate_data"
                           " FROM ts_calls")  # fmt: skip
    assert calls == [{"rel": "grades", "col": "at", "if_not_exists": True, "migrate_data": True}]
    assert (await drv.table("grades", refresh=True)).hypertable  # and it is read back as one


@pytest.mark.asyncio
async def test_rows_the_database_refuses_go_to_the_error_port_alone(rig: Rig) -> None:
    await deploy(rig.engine, pg("f4", flush_interval=0.05, copy_min_rows=2))
    rig.send("f4",
             {"id": 1, "score": 1}, {"id": "one", "score": 2},  # not a number: ours
             {"id": 2, "score": 12345.6},  # numeric(5,1) overflow: the database's
             {"id": 1, "score": 3},  # duplicate key: the database's
             {"id": 3, "score": 4, "colour": "red"},  # not a column
             {"id": 4, "score": 5})  # fmt: skip
    await until(lambda: len(got("f4", "sink_error")) == 4, what="4 refused rows")
    await until(lambda: stats(rig.engine, "f4", "n")["written"] == 2, what="the good rows")
    assert sorted(r["id"] for r in await rig.rows("SELECT id FROM grades")) == [1, 4]
    errors = {str(m["payload"]["id"]): m["error"]["message"] for m in got("f4", "sink_error")}
    assert "column 'id': 'one' is not a whole number" in errors["one"]
    assert "numeric field overflow" in errors["2"] and "SQLSTATE 22003" in errors["2"]
    assert "duplicate key" in errors["1"] and "SQLSTATE 23505" in errors["1"]
    assert "payload key 'colour' is not a column of public.grades" in errors["3"]
    st = stats(rig.engine, "f4", "n")
    assert st["rejected"] == 4 and st["errors"] == 4 and st["pending"] == 0


@pytest.mark.asyncio
async def test_unknown_fields_may_be_left_out(rig: Rig) -> None:
    await deploy(rig.engine, pg("f5", unknown_fields="ignore", flush_interval=0.05))
    rig.send("f5", {"id": 1, "score": 2, "colour": "red"})
    await until(lambda: stats(rig.engine, "f5", "n")["written"] == 1, what="the row")
    assert got("f5", "sink_error") == []


@pytest.mark.asyncio
async def test_a_missing_table_holds_rows_and_reports_until_it_exists(rig: Rig) -> None:
    await deploy(rig.engine, pg("f6", table="later", flush_interval=0.05))
    rig.send("f6", {"id": 1}, {"id": 2})
    await until(lambda: stats(rig.engine, "f6", "n")["errors"] >= 1, what="the trouble")
    st = stats(rig.engine, "f6", "n")
    assert st["pending"] == 2 and st["written"] == 0
    assert "table 'later' does not exist" in st["state"] and "rows held" in st["last_error"]
    await execute(rig.dsn, "CREATE TABLE later (id int)")
    await until(lambda: stats(rig.engine, "f6", "n")["written"] == 2, 40, "the held rows")
    assert await rig.count("later") == 2
    assert stats(rig.engine, "f6", "n")["state"] == "writing"


@pytest.mark.asyncio
async def test_a_database_away_holds_a_bounded_batch_and_writes_it_back(rig: Rig) -> None:
    await deploy(rig.engine, pg("f7", flush_interval=0.05, max_pending=50, batch_size=20))
    rig.send("f7", *({"id": i} for i in range(10)))
    await until(lambda: stats(rig.engine, "f7", "n")["written"] == 10, what="before")
    await set_allowed(rig.dsn, False)
    drv = rig.conns.live()[("postgres", "default")]
    await until(lambda: not drv.connected, what="the outage to be seen")
    rig.send("f7", *({"id": i} for i in range(10, 90)))  # 80 rows for a bound of 50
    await until(lambda: stats(rig.engine, "f7", "n")["pending"] == 50, what="the held rows")
    st = stats(rig.engine, "f7", "n")
    assert st["dropped"] == 30 and st["held_dropped"] == 30
    assert st["state"] == "holding: database away"
    status = rig.conns.status()["postgres.default"]
    assert status["state"] != "connected" and status["last_error"]
    await set_allowed(rig.dsn, True)
    await until(lambda: stats(rig.engine, "f7", "n")["written"] == 60, 30, "the held rows")
    ids = sorted(r["id"] for r in await rig.rows("SELECT id FROM grades"))
    assert ids == [*range(10), *range(40, 90)]  # the oldest held rows were dropped
    assert stats(rig.engine, "f7", "n")["pending"] == 0


@pytest.mark.asyncio
async def test_rows_written_into_a_silent_network_are_held_and_written_later() -> None:
    """A proxy between the node and the server stops forwarding without closing (an
    unplugged cable) while a batch is being written: the batch is held, not lost, and
    written once the path works again."""
    from pg_server import Proxy

    async with fresh_database() as dsn:
        await execute(dsn, "CREATE TABLE grades (id int PRIMARY KEY)")
        proxy = Proxy()
        await proxy.start()
        conns = Connections(parse_sections({"postgres": {"default": {
            "dsn": proxy.dsn(dsn), **FAST, "connect_timeout": 0.5, "command_timeout": 1.0}}}))
        engine = Engine(Services(drivers=conns), stop_timeout=5.0)
        rig = Rig(dsn, engine, conns)
        try:
            await deploy(engine, pg("f9", flush_interval=0.05))
            rig.send("f9", {"id": 0})
            await until(lambda: stats(engine, "f9", "n")["written"] == 1, what="before")
            proxy.pause()
            rig.send("f9", *({"id": i} for i in range(1, 11)))  # a flush starts at once
            drv = conns.live()[("postgres", "default")]
            await until(lambda: not drv.connected, what="the silent link to be noticed")
            proxy.resume()
            proxy.cut()
            await until(lambda: stats(engine, "f9", "n")["written"] == 11, 30, "held rows")
            assert sorted(r["id"] for r in await rig.rows("SELECT id FROM grades")) == list(
                range(11))
            assert stats(engine, "f9", "n")["dropped"] == 0
        finally:
            await engine.stop()
            await conns.close()
            await proxy.close()


@pytest.mark.asyncio
async def test_stop_writes_what_is_held(rig: Rig) -> None:
    await deploy(rig.engine, pg("f8", flush_interval=3600, batch_size=1000))
    rig.send("f8", *({"id": i} for i in range(7)))
    await until(lambda: stats(rig.engine, "f8", "n")["pending"] == 7, what="held rows")
    await rig.engine.remove("f8")
    assert await rig.count() == 7


@pytest.mark.parametrize(
    ("params", "says"),
    [
        ({"mode": "upsert"}, "upsert needs key"),
        ({"key": ["id"]}, "key is for mode upsert"),
        ({"table": "a.b.c"}, "one dot at most"),
        ({"columns": {}}, "columns is empty"),
        ({"mode": "upsert", "key": ["id"], "columns": {"g": "payload.g"}},
         "key column 'id' is not in columns"),
        ({"batch_size": 0}, "batch_size"),
    ],
)  # fmt: skip
def test_bad_params_fail_validation_with_the_place(params: dict[str, Any], says: str) -> None:
    with pytest.raises(FlowError, match=says):
        validate(single("v", "PostgresNode", {"table": "grades", **params}))


# -- queries ------------------------------------------------------------------------------------
def q(fid: str, **params: Any) -> dict[str, Any]:
    return single(fid, "PostgresQueryNode", params, ports=("out", "error"))


@pytest.mark.asyncio
async def test_a_query_binds_message_values_and_sends_rows_on(rig: Rig) -> None:
    await execute(rig.dsn, "INSERT INTO grades VALUES (1, 91.5, 'A', '2024-05-01T00:00Z'),"
                  " (2, 70, 'C', NULL)")  # fmt: skip
    await deploy(rig.engine, q("q1", sql="SELECT id, score, grade, at, '{\"k\": 1}'::jsonb AS j"
                               " FROM grades WHERE score >= $1 ORDER BY id",
                               args=["payload.min"], output="payload.rows"))  # fmt: skip
    rig.send("q1", {"min": 50}, {"min": 80}, {"min": "'; DROP TABLE grades; --"})
    await until(lambda: len(got("q1", "sink_out")) == 2 and len(got("q1", "sink_error")) == 1)
    first, second = (m["payload"]["rows"] for m in got("q1", "sink_out"))
    assert [r["id"] for r in first] == [1, 2]
    assert second == [{"id": 1, "score": 91.5, "grade": "A", "at": "2024-05-01T00:00:00+00:00",
                       "j": {"k": 1}}]  # fmt: skip
    assert await rig.count() == 2  # the hostile value was a parameter, refused as a number
    assert got("q1", "sink_out")[0]["payload"]["min"] == 50  # the rest of the payload kept


@pytest.mark.asyncio
async def test_query_results_value_first_and_status(rig: Rig) -> None:
    await deploy(rig.engine, q("q2", sql="SELECT count(*) FROM grades", result="value"))
    await deploy(rig.engine, q("q3", sql="INSERT INTO grades (id, grade) VALUES ($1, $2)",
                               args=["payload.id", "topic"], result="status"))  # fmt: skip
    await deploy(rig.engine, q("q4", sql="SELECT * FROM grades WHERE id = $1", args=["payload"],
                               result="first"))  # fmt: skip
    rig.send("q3", {"id": 5})
    await until(lambda: len(got("q3", "sink_out")) == 1)
    assert got("q3", "sink_out")[0]["payload"] == {"command": "INSERT", "count": 1}
    rig.send("q2", None)
    await until(lambda: len(got("q2", "sink_out")) == 1)
    assert got("q2", "sink_out")[0]["payload"] == 1
    rig.send("q4", 5, 6)
    await until(lambda: len(got("q4", "sink_out")) == 2)
    assert [m["payload"] for m in got("q4", "sink_out")] == [
        {"id": 5, "score": None, "grade": "t", "at": None}, None]


@pytest.mark.asyncio
async def test_a_query_while_the_database_is_away_fails_at_once(rig: Rig) -> None:
    await deploy(rig.engine, q("q5", sql="SELECT 1", max_rows=1))
    rig.send("q5", None)
    await until(lambda: len(got("q5", "sink_out")) == 1)
    await set_allowed(rig.dsn, False)
    drv = rig.conns.live()[("postgres", "default")]
    await until(lambda: not drv.connected, what="the outage")
    rig.send("q5", None)
    await until(lambda: len(got("q5", "sink_error")) == 1)
    assert got("q5", "sink_error")[0]["error"]["type"] == "NotConnected"
    await set_allowed(rig.dsn, True)
    await until(lambda: drv.connected, what="the reconnect")
    rig.send("q5", None)
    await until(lambda: len(got("q5", "sink_out")) == 2)
    assert len(got("q5", "sink_error")) == 1  # nothing was replayed


@pytest.mark.asyncio
async def test_a_result_over_max_rows_is_an_error(rig: Rig) -> None:
    await deploy(rig.engine, q("q6", sql="SELECT generate_series(1, 50) AS n", max_rows=10))
    rig.send("q6", None)
    await until(lambda: len(got("q6", "sink_error")) == 1)
    assert "more than max_rows (10)" in got("q6", "sink_error")[0]["error"]["message"]


def test_placeholders_and_args_must_agree() -> None:
    with pytest.raises(FlowError, match=r"placeholders \$1..\$2 but args gives 1"):
        validate(q("v", sql="SELECT $1, $2", args=["payload"]))
    with pytest.raises(FlowError, match="sql has no \\$1"):
        validate(q("v", sql="SELECT '$1'", args=["payload"]))  # quoted: not a placeholder
    validate(q("v", sql="SELECT $1 || '$2'", args=["payload"]))


# -- the seed's example, end to end through the daemon ------------------------------------------
GRADING = Path(__file__).resolve().parents[2] / "configs" / "examples" / "grading.json"


def post(url: str, body: Any) -> int:
    import json
    import urllib.error
    import urllib.request

    req = urllib.request.Request(url, data=json.dumps(body).encode(), method="POST",
                                 headers={"Content-Type": "application/json"})  # fmt: skip
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            return int(resp.status)
    except urllib.error.HTTPError as err:
        return int(err.code)


@pytest.mark.asyncio
async def test_the_grading_example_webhook_in_rows_out_across_a_database_restart(
    tmp_path: Path,
) -> None:
    """configs/examples/grading.json as written: POST /webhook/wf-grading/grade -> map ->
    Lua grade -> PostgresNode table grades, against a PostgreSQL server of the test's own
    that is stopped (fast shutdown: its sessions are ended) and started again in the
    middle. The hooks still answer 202 while it is down, the rows are held and land once
    it is back; status says what happened meanwhile."""
    from pg_server import PrivateCluster

    from mechaway.testing.daemon import DaemonProc

    server = PrivateCluster()
    server.start()
    try:
        dsn = server.dsn
        await execute(dsn, "CREATE TABLE grades (id integer NOT NULL, score numeric NOT NULL,"
                      " grade text NOT NULL, graded_at timestamptz NOT NULL DEFAULT now())")
        d = DaemonProc(tmp_path, config=f'[postgres.default]\ndsn = "{dsn}"\n'
                       "reconnect_min = 0.05\nreconnect_max = 0.3\nping_interval = 0.2\n")
        (d.flows / "grading.json").write_text(GRADING.read_text())
        d.start()
        try:
            d.wait(lambda: (d.flow_status("wf-grading") or {}).get("nodes"), 20, "the flow")
            hook = f"{d.url}/webhook/wf-grading/grade"
            scores = {i: (i * 7) % 101 for i in range(1, 41)}
            for i in range(1, 21):
                assert post(hook, {"id": i, "score": scores[i], "extra": "dropped by n2"}) == 202
            assert post(hook, {"id": 99, "score": "lots"}) == 202  # the Lua script refuses it

            def written() -> int:
                flow = d.flow_status("wf-grading") or {}
                return int(flow["nodes"]["n4"].get("written", 0))

            d.wait(lambda: written() == 20, 20, "20 rows")
            server.stop()
            d.wait(lambda: d.status()["connections"]["postgres.default"]["state"] != "connected",
                   20, "the outage in status")  # fmt: skip
            for i in range(21, 41):
                assert post(hook, {"id": i, "score": scores[i]}) == 202
            d.wait(lambda: d.flow_status("wf-grading")["nodes"]["n4"]["pending"] == 20, 20,
                   "the held rows")  # fmt: skip
            st = d.status()
            assert any(p.startswith("postgres.default") for p in st["problems"]), st["problems"]
            assert st["flows"]["wf-grading"]["nodes"]["n4"]["state"] == "holding: database away"
            server.start()
            d.wait(lambda: written() == 40, 30, "the held rows written")
            rows = await fetch(dsn, "SELECT id, score, grade FROM grades ORDER BY id")
            assert [r["id"] for r in rows] == list(range(1, 41))
            letters = {r["id"]: r["grade"] for r in rows}
            assert letters[13] == "A" and scores[13] == 91  # 13 * 7 = 91
            assert letters[12] == "B" and scores[12] == 84
            assert letters[1] == "F" and scores[1] == 7
            n3 = d.flow_status("wf-grading")["nodes"]["n3"]
            assert n3["errors"] == 1 and "expected {id, score 0-100}" in n3["last_error"]
            assert d.status()["connections"]["postgres.default"]["reconnects"] >= 1
        finally:
            assert d.terminate() == 0
    finally:
        server.close()
