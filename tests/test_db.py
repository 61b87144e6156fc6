"""The database plumbing of the hot paths: one SQL text for both roads (db.Statement), callers queued in
arrival order within a bound (db.HotPool), group commit (db.Coalescer: who waits, who goes together, who
gets which answer or error)."""

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from typing import Any

import pytest

from window_gate.db import Coalescer, HotPool, Statement


def test_statement_numbers_each_name_once_and_leaves_casts_and_literals() -> None:
    statement = Statement("SELECT :a::text, CAST(:b AS jsonb), :a, 'wg:x', '10:30' WHERE x = :b")
    assert statement.sql == "SELECT $1::text, CAST($2 AS jsonb), $1, 'wg:x', '10:30' WHERE x = $2"
    assert statement.names == ["a", "b"]


class SlowPool:
    """Stands in for asyncpg's pool (and its connections): remembers the order statements start in and
    how many run at once."""

    def __init__(self, delay: float = 0.01) -> None:
        self.started: list[str] = []
        self.running = self.most = 0
        self.delay = delay
        self.terminated = 0

    def terminate(self) -> None:
        self.terminated += 1

    @contextlib.asynccontextmanager
    async def acquire(self) -> AsyncIterator["SlowPool"]:
        yield self

    async def fetch(self, query: str, *_: object) -> list[Any]:
        self.started.append(query)
        self.running += 1
        self.most = max(self.most, self.running)
        try:
            await asyncio.sleep(self.delay)
        finally:
            self.running -= 1
        return []


async def test_hot_pool_runs_at_most_its_size_at_once_in_arrival_order() -> None:
    pool = SlowPool()
    hot = HotPool(pool, 2, timeout=5)
    await asyncio.gather(*(hot.fetch(str(i)) for i in range(6)))
    assert pool.most == 2
    assert pool.started == [str(i) for i in range(6)]


async def test_hot_pool_bounds_each_call_queue_included_and_drops_the_cut_off_connection() -> None:
    pool = SlowPool(delay=60)  # a database that never answers
    hot = HotPool(pool, 1, timeout=0.2)
    start = time.monotonic()
    outcomes = await asyncio.gather(*(hot.fetch(str(i)) for i in range(3)), return_exceptions=True)
    assert all(isinstance(outcome, TimeoutError) for outcome in outcomes)
    assert time.monotonic() - start < 0.5  # the two queued callers waited no longer than the first
    assert pool.started == ["0"] and pool.terminated == 1


class Recorder:
    """A `run` that remembers its groups, refuses items named "bad", and holds every group until `gate`."""

    def __init__(self) -> None:
        self.groups: list[list[str]] = []
        self.gate = asyncio.Event()
        self.entered = asyncio.Event()  # set by the first group
        self.fail: Exception | None = None  # raised by every group, when set

    async def __call__(self, items: list[str]) -> list[str]:
        self.groups.append(items)
        self.entered.set()
        await self.gate.wait()
        if self.fail is not None:
            raise self.fail
        if "bad" in items:
            raise ValueError("bad item")
        return [item.upper() for item in items]


async def one_in_flight(max_group: int = 64) -> tuple[Recorder, Coalescer[str, str], "asyncio.Task[str]"]:
    """A coalescer whose first call ("a") is being run, held open."""
    run = Recorder()
    coalesce = Coalescer(run, max_group)
    first = asyncio.create_task(coalesce("a"))
    await run.entered.wait()
    return run, coalesce, first


async def test_calls_arriving_while_one_is_in_flight_go_together_in_order() -> None:
    run, coalesce, first = await one_in_flight()
    rest = [asyncio.create_task(coalesce(x)) for x in "bcde"]
    await asyncio.sleep(0)
    run.gate.set()
    assert await asyncio.gather(first, *rest) == ["A", "B", "C", "D", "E"]
    assert run.groups == [["a"], ["b", "c", "d", "e"]]


async def test_a_lone_call_goes_at_once() -> None:
    run = Recorder()
    run.gate.set()
    coalesce = Coalescer(run)
    assert await coalesce("a") == "A"
    assert await coalesce("b") == "B"
    assert run.groups == [["a"], ["b"]]


async def test_heavy_work_waiting_opens_a_second_lane_light_work_keeps_one() -> None:
    """Items of weight 100 (a delivery of 100 statuses) go beside the group in flight; light ones wait
    for it and go together."""
    run = Recorder()
    coalesce = Coalescer(run, lanes=2, weight=len, lane_weight=100)
    first = asyncio.create_task(coalesce("a"))
    await run.entered.wait()
    light = [asyncio.create_task(coalesce(x)) for x in "bc"]
    await asyncio.sleep(0)
    assert run.groups == [["a"]]  # still one lane
    heavy = asyncio.create_task(coalesce("h" * 99))  # 1 + 1 + 99 waiting: over the bar
    await asyncio.sleep(0.01)
    assert run.groups == [["a"], ["b", "c", "h" * 99]] and len(coalesce.draining) == 2
    third = asyncio.create_task(coalesce("d" * 100))  # both lanes busy: it waits
    await asyncio.sleep(0.01)
    assert len(run.groups) == 2
    run.gate.set()
    assert await asyncio.gather(first, *light, heavy, third) == ["A", "B", "C", "H" * 99, "D" * 100]
    assert run.groups[2:] == [["d" * 100]] and not coalesce.draining and coalesce.waiting_weight == 0


async def test_a_call_arriving_as_a_lane_finishes_is_not_stranded() -> None:
    run = Recorder()
    run.gate.set()
    coalesce = Coalescer(run, lanes=2)
    for _ in range(3):  # each call finds the previous lane gone, however close behind it comes
        assert await asyncio.gather(*(coalesce(x) for x in "ab")) == ["A", "B"]
    assert not coalesce.draining


async def test_groups_are_capped() -> None:
    run, coalesce, first = await one_in_flight(max_group=2)
    rest = [asyncio.create_task(coalesce(x)) for x in "bcde"]
    await asyncio.sleep(0)
    run.gate.set()
    assert await asyncio.gather(first, *rest) == list("ABCDE")
    assert run.groups == [["a"], ["b", "c"], ["d", "e"]]


async def test_a_failed_group_is_run_again_item_by_item_each_caller_its_own_outcome() -> None:
    run, coalesce, first = await one_in_flight()
    rest = [asyncio.create_task(coalesce(x)) for x in ("b", "bad", "c")]
    await asyncio.sleep(0)
    run.gate.set()
    outcomes = await asyncio.gather(first, *rest, return_exceptions=True)
    assert outcomes[:2] == ["A", "B"] and outcomes[3] == "C"
    assert isinstance(outcomes[2], ValueError)
    assert run.groups == [["a"], ["b", "bad", "c"], ["b"], ["bad"], ["c"]]


async def test_a_group_failed_by_an_unavailable_database_is_not_run_again_item_by_item() -> None:
    # Each run would wait out the database's bound again: the last caller, once per item before it.
    run, coalesce, first = await one_in_flight()
    run.fail = TimeoutError("no answer")
    rest = [asyncio.create_task(coalesce(x)) for x in "bcd"]
    await asyncio.sleep(0)
    run.gate.set()
    outcomes = await asyncio.gather(first, *rest, return_exceptions=True)
    assert all(isinstance(outcome, TimeoutError) for outcome in outcomes)
    assert run.groups == [["a"], ["b", "c", "d"]]


async def test_a_cancelled_caller_strands_nobody() -> None:
    run, coalesce, first = await one_in_flight()
    second, third = asyncio.create_task(coalesce("b")), asyncio.create_task(coalesce("c"))
    await asyncio.sleep(0)
    first.cancel()
    second.cancel()
    run.gate.set()
    assert await third == "C"
    assert run.groups == [["a"], ["b", "c"]]  # what was handed over still runs: its effect is not undone
    with pytest.raises(asyncio.CancelledError):
        await first


async def test_shutdown_mid_group_fails_every_waiter() -> None:
    _, coalesce, first = await one_in_flight()
    second = asyncio.create_task(coalesce("b"))
    await asyncio.sleep(0)
    (draining,) = coalesce.draining
    draining.cancel()
    for call in (first, second):
        with pytest.raises(asyncio.CancelledError):
            await call
