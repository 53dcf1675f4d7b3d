"""Steps of the wall clock (a Pi has no RTC: NTP moves it by years, sometimes backward).

The modules under test read time through their ``time`` module attribute; each test swaps
it for a ``Clock`` whose wall and monotonic readings it moves by hand: no real clock is
changed and no assertion depends on how long anything takes.
"""

from __future__ import annotations

import asyncio
import types
from typing import Any

import pytest

import mechaway.nodes.inject as inject_mod
import mechaway.store.kv as kv_mod
import mechaway.store.series as series_mod
from mechaway.nodes.inject import CronPlan, InjectNode, InjectParams
from mechaway.nodes.timing import DelayNode, DelayParams, RateLimitNode, RateLimitParams
from mechaway.store.db import Database
from mechaway.store.kv import KVStore
from mechaway.store.series import SeriesStore

BOOT = 60.0  # 1970-01-01 00:01: a Pi without fake-hwclock
SYNCED = 1_795_000_000.0  # 2026-11-18: what NTP says
DAY = 86400.0


class Clock:
    """A stand-in for the ``time`` module: wall and monotonic readings moved by hand."""

    def __init__(self, wall: float, mono: float = 1000.0) -> None:
        self.wall = wall
        self.mono = mono

    def time(self) -> float:
        return self.wall

    def monotonic(self) -> float:
        return self.mono

    def advance(self, s: float) -> None:
        """``s`` seconds go by."""
        self.wall += s
        self.mono += s

    def step(self, s: float) -> None:
        """The wall clock is set ``s`` seconds forward (backward if negative)."""
        self.wall += s


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> Clock:
    c = Clock(BOOT)
    for mod in (series_mod, kv_mod, inject_mod):
        monkeypatch.setattr(mod, "time", c)
    return c


async def _rows(s: SeriesStore, name: str) -> int:
    return int(s.info(name)["rows"])


# -- series: age retention ----------------------------------------------------------------------
@pytest.mark.asyncio
async def test_samples_stamped_before_ntp_survive_the_jump(db: Database, clock: Clock) -> None:
    s = SeriesStore(db, age_check_interval=0.0)
    clock.advance(30)
    await asyncio.gather(*[s.append("t", i, clock.time() + i) for i in range(50)])
    clock.advance(90)
    await s.maintain()  # records an insertion mark (all 50 were in by now)
    clock.advance(100)
    clock.step(SYNCED - clock.wall)  # NTP: 1970 -> 2026
    await s.maintain()
    assert await _rows(s, "t") == 50  # before the fix: 0, deleted as 56 years old
    assert s.clock_steps == 1
    # the data is deleted once it is really 7 days old (by the monotonic clock)
    clock.advance(7 * DAY - 200)
    await s.maintain()
    assert await _rows(s, "t") == 50
    clock.advance(300)
    await s.maintain()
    assert await _rows(s, "t") == 0


@pytest.mark.asyncio
async def test_fake_hwclock_step_keeps_recent_samples(db: Database, clock: Clock) -> None:
    # booted at the time fake-hwclock saved (plausible, 6 days behind), then NTP steps
    clock.wall = SYNCED - 6 * DAY
    s = SeriesStore(db, age_check_interval=0.0)
    await asyncio.gather(*[s.append("t", i, clock.time(), max_age_s=DAY) for i in range(20)])
    clock.advance(120)
    clock.step(6 * DAY)
    await s.maintain()
    assert await _rows(s, "t") == 20  # before the fix: 0
    # a backfill with old device timestamps, sent after the step, still expires at once
    await asyncio.gather(
        *[s.append("t", i, clock.time() - 2 * DAY, max_age_s=DAY) for i in range(5)]
    )
    clock.advance(1)
    await s.maintain()
    assert await _rows(s, "t") == 20
    assert (await s.query("t"))["points"][0][0] == SYNCED - 6 * DAY


@pytest.mark.asyncio
async def test_earlier_runs_unset_clock_samples_are_left_to_size(
    db: Database, clock: Clock
) -> None:
    first = SeriesStore(db, age_check_interval=0.0)
    await asyncio.gather(*[first.append("t", i, clock.time() + i) for i in range(10)])
    await asyncio.gather(*[first.append("u", i, SYNCED - 30 * DAY) for i in range(10)])
    # restart with the clock set: a new store over the same file
    clock.wall = SYNCED
    second = SeriesStore(db, age_check_interval=0.0)
    await second.maintain()
    assert await _rows(second, "t") == 10  # stamped by an unset clock: age unknown
    assert await _rows(second, "u") == 0  # a trusted stamp 30 days old: expired


@pytest.mark.asyncio
async def test_backward_step_keeps_samples(db: Database, clock: Clock) -> None:
    clock.wall = SYNCED
    s = SeriesStore(db, age_check_interval=0.0)
    await asyncio.gather(*[s.append("t", i, clock.time()) for i in range(10)])
    clock.advance(10)
    clock.step(-365 * DAY)  # a dying coin cell, a bad NTP server
    await asyncio.gather(*[s.append("t", i, clock.time()) for i in range(10)])
    await s.maintain()
    assert await _rows(s, "t") == 20
    assert s.clock_steps == 1
    # a query is ordered by ts: the samples stamped after the step come first
    pts = (await s.query("t"))["points"]
    assert [p[0] for p in pts] == sorted(p[0] for p in pts)


@pytest.mark.asyncio
async def test_equal_timestamps_come_back_in_insertion_order(db: Database, clock: Clock) -> None:
    s = SeriesStore(db)
    await asyncio.gather(*[s.append("t", v, 5.0) for v in (3, 1, 2)])
    assert [p[1] for p in (await s.query("t"))["points"]] == [3.0, 1.0, 2.0]


# -- KV: time to live ---------------------------------------------------------------------------
@pytest.mark.asyncio
async def test_ttl_survives_a_forward_step(db: Database, clock: Clock) -> None:
    kv = KVStore(db, purge_interval=0.0)
    await kv.set("n", "k", 1, ttl=3600)
    pending = kv.set("n", "p", 2, ttl=3600)  # not committed when the clock steps
    clock.advance(10)
    clock.step(SYNCED - clock.wall)
    assert kv.get("n", "k") == 1  # before the fix: expired at once
    await kv.maintain()
    await pending
    assert kv.get("n", "k") == 1 and kv.get("n", "p") == 2
    assert kv.keys("n") == ["k", "p"]  # the purge after the step deleted nothing
    assert kv.clock_steps == 1
    clock.advance(3600)
    assert kv.get("n", "k") is None and kv.keys("n") == []


@pytest.mark.asyncio
async def test_ttl_ends_after_a_backward_step(db: Database, clock: Clock) -> None:
    clock.wall = SYNCED
    kv = KVStore(db, purge_interval=0.0)
    await kv.set("n", "k", 1, ttl=60)
    clock.step(-DAY)
    await kv.maintain()
    clock.advance(59)
    assert kv.get("n", "k") == 1
    clock.advance(2)
    assert kv.get("n", "k") is None  # before the fix: alive for another day


@pytest.mark.asyncio
async def test_ttl_after_a_restart_follows_the_step(db: Database, clock: Clock) -> None:
    # a key of an earlier (synced) run, and the 1970 boot of this one
    clock.wall = SYNCED - 100
    await KVStore(db).set("n", "old", 0, ttl=DAY)
    clock.wall = BOOT
    kv = KVStore(db, purge_interval=0.0)
    await kv.set("n", "k", 1, ttl=3600)
    clock.advance(100)
    clock.step(SYNCED - clock.wall)
    await kv.maintain()  # shifts this run's deadlines to the new time
    # restart: a fresh store reads the rows with the wall clock
    again = KVStore(db)
    assert again.get("n", "k") == 1  # before the fix: expired (its deadline was 1970)
    rows = dict(db.read("SELECT key, expires_at FROM kv"))
    assert rows["k"] == pytest.approx(SYNCED + 3500)
    assert rows["old"] == SYNCED - 100 + DAY  # an earlier run's key is not moved
    clock.advance(3500)
    assert KVStore(db).get("n", "k") is None


# -- cron inject --------------------------------------------------------------------------------
class _Stop(Exception):
    pass


async def _run_cron(
    monkeypatch: pytest.MonkeyPatch, clock: Clock, cron: str, sleeps: int, at: dict[int, float]
) -> list[float]:
    """Run a cron InjectNode's task on ``clock``: each sleep advances it; before sleep ``i``
    the wall clock steps by ``at[i]``. Returns the wall times it fired at."""
    fired: list[float] = []
    n = 0

    async def sleep(s: float) -> None:
        nonlocal n
        assert s >= 0
        clock.advance(s)
        n += 1
        if n in at:
            clock.step(at[n])
        if n >= sleeps:
            raise _Stop

    monkeypatch.setattr(inject_mod, "asyncio", types.SimpleNamespace(sleep=sleep))
    node = InjectNode("i", InjectParams(cron=cron), types.SimpleNamespace(flow_id="f"))
    node.emit = lambda msg, *a: fired.append(clock.time())  # type: ignore[assignment, misc]
    with pytest.raises(_Stop):
        await node._run()
    return fired


@pytest.mark.asyncio
async def test_cron_after_a_forward_step_fires_no_burst(
    monkeypatch: pytest.MonkeyPatch, clock: Clock
) -> None:
    # every minute; after the 3rd sleep NTP moves the clock from 1970 to 2026
    fired = await _run_cron(monkeypatch, clock, "* * * * *", 600, {3: SYNCED - BOOT})
    after = [t for t in fired if t >= SYNCED]
    assert after, "the schedule goes on after the step"
    span = max(after) - min(after)
    assert len(after) <= span / 60 + 1  # before the fix: thousands of fires at once
    assert all(t % 60 == 0 for t in after)  # on the slots of the new time


@pytest.mark.asyncio
async def test_cron_after_a_backward_step_does_not_stall(
    monkeypatch: pytest.MonkeyPatch, clock: Clock
) -> None:
    clock.wall = SYNCED
    fired = await _run_cron(monkeypatch, clock, "* * * * *", 200, {3: -365 * DAY})
    # every minute of the new time fires; before the fix: one fire, then nothing for a
    # year (the next slot was planned in 2026)
    assert len([t for t in fired if t < SYNCED - 300 * DAY]) >= 100


def test_cron_plan_small_steps() -> None:
    p = CronPlan("0 * * * *", 3600.0 * 10 + 1)  # hourly, just after 10:00
    assert p.target == 3600.0 * 11
    # forward over 11:00 by 30 minutes: 11:00 fires once, late, then 12:00
    assert p.poll(3600.0 * 11.5) is None
    assert p.target == 3600.0 * 12
    assert p.poll(3600.0 * 11.5 + 1) == 60.0
    # back by 40 minutes (10:50): 11:00 does not fire again, 12:00 is kept
    assert p.poll(3600.0 * 10.9) == 60.0 and p.target == 3600.0 * 12
    assert p.poll(3600.0 * 12) is None
    # far forward: the missed slot is skipped, not fired
    assert p.poll(3600.0 * 20) is not None and p.skipped == 1
    assert p.target == 3600.0 * 21


# -- timing nodes: durations on the monotonic clock ---------------------------------------------
def _ctx() -> Any:
    return types.SimpleNamespace(flow_id="f")


def test_rate_limit_and_delay_ignore_wall_steps(monkeypatch: pytest.MonkeyPatch) -> None:
    import mechaway.nodes.timing as timing_mod

    c = Clock(BOOT)
    monkeypatch.setattr(timing_mod, "time", c)
    rl = RateLimitNode("r", RateLimitParams(rate=2, per=1.0), _ctx())
    assert [rl.process({}) is not None for _ in range(3)] == [True, True, False]
    c.step(SYNCED)  # no burst of tokens from a forward step
    assert rl.process({}) is None
    c.step(-2 * SYNCED)  # nor a stall after a backward one
    c.advance(0.5)
    assert rl.process({}) is not None
    d = DelayNode("d", DelayParams(seconds=5), _ctx())
    d._later = lambda *a: None  # type: ignore[method-assign]
    d.process({"n": 1})
    out: list[Any] = []
    d.emit = lambda msg, *a: out.append(msg)  # type: ignore[assignment, misc]
    c.step(SYNCED)
    d._release()
    assert out == []  # a forward step releases nothing early
    c.advance(5)
    d._release()
    assert out == [{"n": 1}]


# -- outbox: order never depends on the clock -----------------------------------------------------
@pytest.mark.asyncio
async def test_outbox_order_is_seq_whatever_the_stamps(db: Database) -> None:
    from mechaway.store.outbox import Outbox

    ob = Outbox.of(db)
    seqs = [await ob.append("t", i, ts=ts) for i, ts in enumerate((SYNCED, BOOT, SYNCED - DAY))]
    assert seqs == sorted(seqs)
    assert [e.value() for e in ob.peek()] == [0, 1, 2]  # insertion order, not ts order
