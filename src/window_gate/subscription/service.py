"""Subscriptions managed by admins, and the sending of their outbox.

On the house's engine (subscription/jobs.py): `relay.dispatch`, a schedule (every second, once per tick
across every replica and worker), first fans out what webhook ingest kept (one outbox row per Meta delivery,
made into one per subscriber that wants it), then enqueues one `relay.drain` job per subscription with
something due, keyed by the subscription, so at most one drain per subscription is queued or running
anywhere and RELAY_CONCURRENCY holds overall. A drain sends that subscription's deliveries,
`RELAY_CONCURRENCY` requests in flight. It claims them with FOR UPDATE SKIP LOCKED in a transaction that
stays open until their outcomes are written in it: no two drains attempt one together, and a drain killed
mid-attempt releases its rows as its connection drops (attempted again: at least once). No write marks a
claim: each delivery's row is written once after its fan-out, with its outcome (bench/relay.py). A
subscriber that hangs holds only its own drain: other subscribers' drains run in other job slots, and
webhook ingest and window checks never wait for it.

Ingest comes first: while a serve process has BUSY_DELIVERIES or more webhook deliveries in flight, it says
so in `ingest_pressure`, and the fan-out and the drains, wherever they run, hold back what is due for up
to RELAY_YIELD_SECONDS, then go on whatever the load. On two cores a relay keeping pace took two thirds of
ingest's throughput with three subscribers; held back, ingest keeps its pace and the relay catches up as
the burst ends (README, Performance).
"""

import asyncio
import logging
import math
import random
import time
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import Any
from uuid import UUID

import aiohttp
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from window_gate.config import Settings
from window_gate.crypto import Sealer
from window_gate.db import HotPool
from window_gate.errors import ValidationFailed
from window_gate.subscription import repository, rules

DRAIN_SECONDS = 60.0  # one drain sends for this long at most; the next tick's goes on (1–2 s later: pgqueuer)
BATCH_ROUNDS = 4  # a claim takes this many rounds of RELAY_CONCURRENCY deliveries, once the first went well
USER_AGENT = "window_gate-relay"
BUSY_DELIVERIES = 16  # webhook deliveries in flight in one process from which ingest is under load
BUSY_SAYS = 1.0  # seconds ahead one word of a busy process reaches
BUSY_EVERY = 0.5  # a busy process says so at most this often
HOLD_STEP = 0.5  # a drain looks at ingest's load this often (a held-back one: its word may have lapsed)

log = logging.getLogger(__name__)


def now() -> datetime:
    return datetime.now(UTC)


async def create(
    conn: AsyncConnection,
    settings: Settings,
    sealer: Sealer,
    *,
    url: str,
    events: Sequence[str],
    phone_number_ids: Sequence[str] | None,
    description: str | None,
) -> dict[str, Any]:
    prefixes = settings.relay_url_prefixes
    if prefixes and not any(url.startswith(p) for p in prefixes):
        raise ValidationFailed(
            "url is not under WINDOW_GATE_RELAY_URL_ALLOWLIST", url=url, allowed_prefixes=prefixes
        )
    secret = rules.new_secret()
    row = await repository.create(
        conn,
        url=url,
        events=sorted(set(events), key=rules.EVENT_TYPES.index),
        phone_number_ids=None if phone_number_ids is None else sorted(set(phone_number_ids)),
        description=description,
        secret=sealer.seal(secret) if sealer.configured else secret,  # at rest: sealed when a key is set
    )
    return {**row._mapping, "secret": secret}  # shown this once


def readable(stored: str, sealer: Sealer) -> str:
    """The secret as shown at creation, from what is stored (sealed, or as shown without ENCRYPTION_KEY)."""
    return (
        stored
        if stored.startswith(rules.SECRET_PREFIX)
        else sealer.decrypt(stored, "a subscription's secret")
    )


async def reencrypt(conn: AsyncConnection, sealer: Sealer) -> int:
    """Every subscription's secret encrypted anew under ENCRYPTION_KEY's first key (those stored as shown,
    from before a key was set, encrypted for the first time); how many."""
    rows = await repository.listing(conn)
    for row in rows:
        stored = row.secret
        sealed = sealer.seal(stored) if stored.startswith(rules.SECRET_PREFIX) else sealer.rotate(stored)
        await repository.set_secret(conn, row.id, sealed)
    return len(rows)


# --- the dispatcher -------------------------------------------------------------------------------------


class Busy:
    """What a serve process's webhook ingest says of its load, for the relay in every process: with
    BUSY_DELIVERIES or more deliveries in flight, `busy_until` BUSY_SAYS ahead, written at most every
    BUSY_EVERY in a task of its own (a delivery never waits for it; a failed write is only logged)."""

    def __init__(self, hot: HotPool) -> None:
        self.hot = hot
        self.quiet_until = 0.0
        self.saying: set[asyncio.Task[None]] = set()

    def note(self, in_flight: int) -> None:
        if in_flight < BUSY_DELIVERIES or time.monotonic() < self.quiet_until:
            return
        self.quiet_until = time.monotonic() + BUSY_EVERY
        task = asyncio.create_task(self._say())
        self.saying.add(task)
        task.add_done_callback(self.saying.discard)

    async def _say(self) -> None:
        try:
            await self.hot.fetch(repository.BUSY, BUSY_SAYS)
        except Exception as exc:  # the relay then does not hold back: nothing is lost
            log.warning("could not say webhook ingest is under load: %s", exc)


async def _hold(engine: AsyncEngine, settings: Settings, subscription_id: UUID | None) -> float | None:
    """Seconds to hold back what is due while ingest is under load: until its word lapses or the oldest is
    RELAY_YIELD_SECONDS old (0: go now); None when nothing is due. Of a subscription's deliveries, or (None)
    of those not fanned out yet."""
    if settings.relay_yield_seconds <= 0:
        return 0.0
    async with engine.connect() as conn:
        p = await repository.pressure(conn, subscription_id)
    if p.oldest_due is None:
        return None
    if p.busy_until is None:
        return 0.0
    hold_until = min(p.busy_until, p.oldest_due + timedelta(seconds=settings.relay_yield_seconds))
    return max(0.0, (hold_until - p.now).total_seconds())


FAN_OUT_BATCH = 1000  # Meta deliveries per statement
FAN_OUT_SECONDS = 1.0  # one dispatch tick fans out for this long at most, then enqueues the drains


async def fan_out(engine: AsyncEngine, settings: Settings) -> int:
    """Kept Meta deliveries made into one outbox row per subscriber (ingest writes one per delivery),
    unless ingest is under load: held back as drains are, the next tick looks again. How many."""
    hold = await _hold(engine, settings, None)
    if hold is None or hold > 0:  # nothing to fan out, or held back
        return 0
    fanned, deadline = 0, time.monotonic() + FAN_OUT_SECONDS
    while True:
        async with engine.begin() as conn:
            n = await repository.fan_out(conn, FAN_OUT_BATCH)
        fanned += n
        if n < FAN_OUT_BATCH or time.monotonic() >= deadline:
            return fanned


async def drain(engine: AsyncEngine, settings: Settings, subscription_id: UUID) -> int:
    """Send a subscription's due deliveries, oldest due first, for at most DRAIN_SECONDS (the next
    dispatch tick goes on). It starts with one round of RELAY_CONCURRENCY and takes BATCH_ROUNDS rounds
    at a time while the subscriber answers; a round with a failure ends the drain, so a subscriber that
    is down or hangs holds a job for one attempt's timeout at most. Deliveries attempted."""
    async with engine.connect() as conn:
        subscription = await repository.get(conn, subscription_id)
    if subscription is None:
        return 0  # deleted since the tick saw it
    secret = readable(subscription.secret, Sealer(settings.encryption_keys))
    concurrency, rounds = settings.relay_concurrency, 1
    turns, deadline, attempted = asyncio.Semaphore(concurrency), time.monotonic() + DRAIN_SECONDS, 0
    async with _session(settings) as session:
        looked = -HOLD_STEP  # when the drain last looked at ingest's load: at most every HOLD_STEP
        while time.monotonic() < deadline:
            if time.monotonic() - looked >= HOLD_STEP:
                if (hold := await _hold(engine, settings, subscription_id)) is None:
                    break
                if hold:
                    await asyncio.sleep(min(HOLD_STEP, hold))
                    continue  # and look again
                looked = time.monotonic()
            async with engine.begin() as conn:  # holds the claimed rows until their outcomes are written
                claimed = await repository.claim(conn, subscription_id, rounds * concurrency)
                if not claimed:
                    break
                outcomes = await asyncio.gather(
                    *(_attempt(session, turns, settings, subscription.url, secret, c) for c in claimed)
                )
                await repository.finish(conn, outcomes)
            attempted += len(claimed)
            if any(o.state != "delivered" for o in outcomes):
                break
            rounds = BATCH_ROUNDS
    return attempted


def _session(settings: Settings) -> aiohttp.ClientSession:
    """One per drain, its keep-alive connections to the subscriber reused throughout. aiohttp, not
    httpx: its C parser costs about a quarter of httpx's CPU per request (bench/relay.py: httpx held a
    drain under 1,000 deliveries/s; README, Performance)."""
    return aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(limit=settings.relay_concurrency),
        timeout=aiohttp.ClientTimeout(total=settings.relay_timeout_seconds),
        headers={"user-agent": USER_AGENT},
    )


async def _attempt(
    session: aiohttp.ClientSession,
    turns: asyncio.Semaphore,
    settings: Settings,
    url: str,
    secret: str,
    delivery: repository.Claimed,
) -> repository.Outcome:
    async with turns:
        at, started = now(), time.perf_counter()
        headers = {
            "content-type": "application/json",
            **rules.headers(delivery.event_type, str(delivery.event_id), delivery.body, secret, at),
        }
        status_code: int | None = None
        try:
            async with session.post(url, data=delivery.body, headers=headers) as answer:
                status_code, text = answer.status, await answer.text(errors="replace")  # read: kept alive
            error = None if 200 <= status_code < 300 else f"HTTP {status_code}: {text[:200]}"
        except (aiohttp.ClientError, TimeoutError) as exc:
            error = f"{type(exc).__name__}: {exc}"[:500] if str(exc) else type(exc).__name__
        duration_ms = round((time.perf_counter() - started) * 1000)
    if error is None:
        return repository.Outcome(delivery.id, at, status_code, None, duration_ms, "delivered", at)
    retry_at = at + backoff(delivery.attempts, settings.relay_max_backoff_seconds)
    dead = retry_at > delivery.retry_from + timedelta(hours=settings.relay_retry_hours)
    return repository.Outcome(
        delivery.id, at, status_code, error, duration_ms, "dead" if dead else "failed", retry_at
    )


def backoff(attempts_before: int, cap_seconds: float) -> timedelta:
    """About 1 s after the first failure, doubling, capped; ±25 % jitter so that deliveries failed
    together (a subscriber down) do not all come back in the same second."""
    base = min(cap_seconds, math.ldexp(1.0, min(attempts_before, 40)))
    return timedelta(seconds=base * random.uniform(0.75, 1.25))  # jitter, not secrecy


# --- the gate's events about windows -------------------------------------------------------------------

ALARMS_PER_STATEMENT = 1000


async def ring_alarms(engine: AsyncEngine, settings: Settings) -> int:
    """`window.expiring` and `window.closed` come due, each emitted once (the alarm is taken in the
    transaction that writes the event: two replicas never both emit it). Alarms rung."""
    window, rung = timedelta(hours=settings.window_hours), 0
    while True:
        async with engine.begin() as conn:
            taken = await repository.ring(conn, ALARMS_PER_STATEMENT)
            await repository.emit(conn, [e for r in taken if (e := _due_event(r, window)) is not None])
        rung += len(taken)
        if len(taken) < ALARMS_PER_STATEMENT:
            return rung


def _due_event(alarm: repository.Rung, window: timedelta) -> repository.Event | None:
    if alarm.window_last_inbound_at != alarm.last_inbound_at:
        return None  # the window is not the one the alarm was set for (merged away, or moved)
    if alarm.closed_by_meta_at is not None and alarm.closed_by_meta_at >= alarm.last_inbound_at:
        return None  # Meta closed it first: window.closed went out then
    expires_at = alarm.last_inbound_at + window
    data = {
        "last_inbound_at": repository.iso(alarm.last_inbound_at),
        "expires_at": repository.iso(expires_at),
    }
    if alarm.kind == "window.closed":
        data["reason"] = "expired"
    at = expires_at if alarm.kind == "window.closed" else alarm.due_at
    return repository.Event(alarm.kind, at, alarm.phone_number_id, alarm.wa_id, alarm.user_id, data)


async def closed_by_meta(
    conn: AsyncConnection, closed: Sequence[tuple[str, int, datetime]], window: timedelta
) -> None:
    """Meta said these windows are closed (131047): `window.closed` now, and no `window.expiring` later,
    for windows whose alarms were set (a subscription wants them)."""
    when = {(pn, customer_id): at for pn, customer_id, at in closed}
    events = [
        repository.Event(
            "window.closed",
            when[r.phone_number_id, r.customer_id],
            r.phone_number_id,
            r.wa_id,
            r.user_id,
            {
                "last_inbound_at": repository.iso(r.last_inbound_at),
                "expires_at": repository.iso(r.last_inbound_at + window),
                "reason": "closed_by_meta",
            },
        )
        for r in await repository.silence(conn, closed)
        if r.kind == "window.closed"
    ]
    await repository.emit(conn, events)
