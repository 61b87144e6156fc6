"""Window checks from a streaming replica (READ_DATABASE_URL), and a measured bound on how stale it is.

Staleness is measured, not assumed. At most every second (and at each /metrics scrape) the primary's WAL
flush position is read, then the replica's replay position. A commit is acknowledged only once flushed, so
once the replica has replayed up to a position the primary had flushed at time t, it holds every
transaction committed before t: it is at most now − t behind.
Nothing else moves the bound, so it grows by itself while no probe confirms a later position (replay
paused or slow, the replica down, cut off, or promoted): past READ_MAX_LAG_SECONDS reads go to the primary.
Why a replica that far behind at most is safe for the window check: README, "Past one machine".
"""

import asyncio
import contextlib
import logging
import math
import time
from collections import deque
from collections.abc import Callable
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncEngine

from window_gate import db, metrics
from window_gate.config import Settings

log = logging.getLogger(__name__)
# pg_lsn arrives as an int (asyncpg). NULL from a server that is not (or no longer) a standby.
PRIMARY_POSITION = select(func.pg_current_wal_flush_lsn())
REPLAYED = select(func.pg_last_wal_replay_lsn())
RECOVERY_CONFLICT = "40001"  # a standby cancels a query that replay must not wait for


class Replica:
    """Where the window check reads (db.Rows, like the hot pool): the replica while it is at most
    `max_lag` seconds behind, else the primary; the primary too for a call the replica could not answer."""

    def __init__(
        self,
        primary: db.HotPool,
        replica: db.HotPool,
        engines: tuple[AsyncEngine, AsyncEngine],  # (primary, replica): the probe's single statements
        max_lag: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.primary, self.replica, self.engines = primary, replica, engines
        self.max_lag = max_lag
        self.every = min(1.0, max_lag / 4)  # a caught-up replica then reads at most ~2 probes behind
        self.clock = clock
        # Primary positions (and when they were read) the replica has not yet been seen to replay.
        self.pending: deque[tuple[float, int]] = deque(maxlen=64)
        self.confirmed = -math.inf  # the replica holds every transaction committed before this instant
        self.probed = -math.inf
        self.probing: asyncio.Task[None] | None = None
        self.failing = False  # a failed probe is logged once, not every second

    def lag(self) -> float:
        """Seconds the replica may be behind the primary, at most (inf: never confirmed)."""
        return self.clock() - self.confirmed

    async def fetch(self, query: str, *args: object) -> list[Any]:
        rows: list[Any] = await self._call("fetch", query, args)
        return rows

    async def fetchrow(self, query: str, *args: object) -> Any:
        return await self._call("fetchrow", query, args)

    async def _call(self, method: str, query: str, args: tuple[object, ...]) -> Any:
        if self.probing is None and self.clock() - self.probed >= self.every:
            self.probing = asyncio.create_task(self.probe())
        if self.lag() <= self.max_lag:
            try:
                answer = await getattr(self.replica, method)(query, *args)
            except Exception as exc:
                if not (db.unavailable(exc) or getattr(exc, "sqlstate", None) == RECOVERY_CONFLICT):
                    raise
                log.warning("replica read failed, reading from the primary: %s", exc)
            else:
                metrics.REPLICA_READS.labels("replica").inc()
                return answer
        metrics.REPLICA_READS.labels("primary").inc()
        return await getattr(self.primary, method)(query, *args)

    async def refresh(self, within: float = 1.0) -> None:
        """Probe now (or join the probe in flight), waiting `within` seconds at most (a scrape must not
        wait on a silent server); the gauge then says the bound as of now either way."""
        if self.probing is None:
            self.probing = asyncio.create_task(self.probe())
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(asyncio.shield(self.probing), within)
        metrics.REPLICA_LAG.set(self.lag())

    async def probe(self) -> None:
        """One reading of both positions, the primary's first; an unreadable one confirms nothing."""
        self.probed = self.clock()
        try:
            at = self.clock()
            self.pending.append((at, await _scalar(self.engines[0], PRIMARY_POSITION)))
            replayed = await _scalar(self.engines[1], REPLAYED)
            while replayed is not None and self.pending and self.pending[0][1] <= replayed:
                self.confirmed = max(self.confirmed, self.pending.popleft()[0])
            self.failing = False
        except Exception as exc:
            if not self.failing:
                log.warning("replica lag probe failed (window checks read the primary meanwhile): %s", exc)
            self.failing = True
        finally:
            metrics.REPLICA_LAG.set(self.lag())
            self.probing = None

    async def close(self) -> None:
        if self.probing is not None:
            self.probing.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self.probing


async def _scalar(engine: AsyncEngine, statement: Any) -> Any:
    async with engine.connect() as conn:
        return await conn.scalar(statement)


async def connect(
    settings: Settings,
    url: str,
    primary: db.HotPool,
    primary_engine: AsyncEngine,
    opened: contextlib.AsyncExitStack,
) -> Replica:
    """The replica's pools (closed by `opened`, the lifespan's exit stack) and the Replica reading them."""
    bound = settings.db_timeout_seconds
    engine = db.make_engine(url, 1, bound)
    opened.push_async_callback(engine.dispose)
    hot = await db.make_hot_pool(url, settings.db_pool_size, bound)
    opened.push_async_callback(hot.close)
    single = engine.execution_options(isolation_level="AUTOCOMMIT")
    replica = Replica(primary, hot, (primary_engine, single), settings.read_max_lag_seconds)
    opened.push_async_callback(replica.close)
    return replica
