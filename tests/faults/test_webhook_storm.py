"""A webhook storm: 10,000 signed deliveries (customers' messages, statuses of the gate's own sends, 131047
failures), each posted 1 to 3 times, all shuffled, posted concurrently over a real socket; the database
afterwards is what an oracle computed from the same events says, and nothing else."""

import asyncio
import random
import time
from collections import Counter
from datetime import UTC, datetime, timedelta
from typing import Any

import aiohttp
import httpx
import orjson
import pytest
from sqlalchemy import text

from tests.conftest import bearer, make_key
from tests.factories import PN, delivery, inbound, signed
from tests.upstream import Meta, template_message
from window_gate.kit import Gate

pytestmark = pytest.mark.slow  # tens of seconds

DELIVERIES = 10_000
CUSTOMERS = 300  # the first KNOWN wrote before the storm; the others are new
KNOWN = 200
CLAMPED = 20  # new customers whose only message claims to come from an hour ahead
SENDS = 600  # template sends of the gate to known customers before the storm
LOST = 5  # every LOST-th answer to a send is lost (`unknown`): found by biz_opaque_callback_data
IN_FLIGHT = 64  # deliveries posted at once
DAY = 24 * 3600
SKEW = 300  # MAX_CLOCK_SKEW_SECONDS
LADDER = ("sent", "delivered", "read")


def wa(i: int) -> str:
    return f"4477009{i:05d}"  # distinct UK mobiles: no national quirk links two of them


def past(rng: random.Random, now: float) -> float:
    """A moment up to 48 h ago, never within 30 min of the 24 h boundary (the oracle's state is exact)."""
    while abs((ago := rng.uniform(0, 2 * DAY)) - DAY) < 1800:
        pass
    return int(now - ago)


def at(ts: float) -> datetime:
    """A webhook timestamp as the gate stores it (whole seconds)."""
    return datetime.fromtimestamp(int(ts), UTC)


def wamid(opaque: str) -> str:
    """Meta's id of a send, whether or not its answer reached the gate."""
    return f"wamid.{opaque.removeprefix('wg:')}"


def status_of(send: dict[str, Any], state: str, ts: float, code: int | None = None) -> dict[str, Any]:
    out: dict[str, Any] = {
        "id": send["wamid"],
        "status": state,
        "timestamp": str(int(ts)),
        "recipient_id": send["wa_id"],
        "biz_opaque_callback_data": f"wg:{send['id']}",
    }
    if code is not None:
        out["errors"] = [{"code": code, "title": "Re-engagement message"}]
    return out


class LossyMeta(Meta):
    """Meta answering each send for its own recipient, with a wamid the statuses can name; every LOST-th
    answer never comes back (the gate records `unknown`)."""

    def __init__(self) -> None:
        super().__init__()
        self.lost = 0
        self.reply = self.answer

    def answer(self, request: httpx.Request) -> httpx.Response:
        body = orjson.loads(request.content)
        if len(self.requests) % LOST == 0:
            self.lost += 1
            raise httpx.ReadTimeout("the answer was lost", request=request)
        answer = {
            "messaging_product": "whatsapp",
            "contacts": [{"input": body["to"], "wa_id": body["to"]}],
            "messages": [{"id": wamid(body["biz_opaque_callback_data"]), "message_status": "accepted"}],
        }
        return httpx.Response(200, json=answer)


@pytest.fixture
def meta() -> LossyMeta:
    return LossyMeta()


async def test_a_storm_of_duplicated_reordered_deliveries_ends_where_the_oracle_says(
    listening: tuple[str, Gate], meta: LossyMeta
) -> None:
    url, gate = listening
    rng = random.Random(20261202)
    now = time.time()
    last: dict[str, datetime] = {}  # the oracle: each customer's latest inbound (as counted), …
    closed: dict[str, datetime] = {}  # … latest 131047, …
    furthest: dict[str, str] = {}  # … each send's status, …
    events: set[tuple[str, str]] = set()  # … and its (send, status) events

    def heard(wa_id: str, ts: float) -> dict[str, Any]:
        last[wa_id] = max(last.get(wa_id, at(0)), at(ts))
        return delivery([inbound(wa_id, ts=ts)])

    # Each request bounded, not the wait for a turn (20,000 are queued at once).
    timeout = aiohttp.ClientTimeout(total=None, sock_connect=10, sock_read=30)
    turns = asyncio.Semaphore(IN_FLIGHT)

    async def deliver(session: aiohttp.ClientSession, payload: bytes, headers: dict[str, str]) -> int:
        async with turns, session.post("/webhooks/whatsapp", data=payload, headers=headers) as r:
            await r.read()
            return r.status

    # Before the storm: KNOWN customers wrote once; the gate sent SENDS templates to them.
    async with aiohttp.ClientSession(url, timeout=timeout) as http:
        before = [signed(heard(wa(i), past(rng, now))) for i in range(KNOWN)]
        assert set(await asyncio.gather(*(deliver(http, *d) for d in before))) == {200}
        key = bearer(await make_key(gate.engine))

        async def send(i: int) -> dict[str, Any]:
            to = wa(rng.randrange(KNOWN))
            async with turns, http.post("/v1/messages", json=template_message(to), headers=key) as r:
                answer = await r.json()
            assert r.status in (201, 504), answer
            furthest[answer["id"]] = "accepted" if r.status == 201 else "unknown"
            return {"id": answer["id"], "wa_id": to, "wamid": wamid(answer["id"])}

        sends = await asyncio.gather(*(send(i) for i in range(SENDS)))
        assert Counter(furthest.values())["unknown"] == meta.lost > SENDS // (2 * LOST)

        # The storm's deliveries, one event each.
        payloads: list[dict[str, Any]] = []
        for s in sends:
            fails = rng.random() < 0.2
            ts = now - rng.uniform(0, 3600)
            if fails:  # sent, then Meta's 131047: the send failed and the window closed
                ladder = [("sent", None), ("failed", 131047)][: rng.choice((1, 2, 2))]
            else:
                ladder = [(state, None) for state in LADDER[: rng.randint(1, 3)]]
            for step, (state, code) in enumerate(ladder):
                payloads.append(delivery(statuses=[status_of(s, state, ts + step, code)]))
                events.add((s["id"], state))
                if code == 131047:
                    closed[s["wa_id"]] = max(closed.get(s["wa_id"], at(0)), at(ts + step))
            furthest[s["id"]] = ladder[-1][0]
        clamped = [wa(i) for i in range(KNOWN, KNOWN + CLAMPED)]
        payloads += [delivery([inbound(c, ts=now + 3600)]) for c in clamped]
        ordinary = [wa(i) for i in range(CUSTOMERS) if wa(i) not in clamped]
        while len(payloads) < DELIVERIES:
            customer = rng.choice(ordinary)
            ts = now + rng.uniform(0, SKEW - 60) if rng.random() < 0.05 else past(rng, now)  # ahead, in skew
            payloads.append(heard(customer, ts))
        copies = [signed(p) for p in payloads for _ in range(rng.randint(1, 3))]
        rng.shuffle(copies)

        # On fresh connections: those idle since the sends may be closing (uvicorn's 5 s keep-alive).
        async with aiohttp.ClientSession(url, timeout=timeout) as storm:
            started = time.monotonic()
            storm_start = datetime.now(UTC)
            answers = await asyncio.gather(*(deliver(storm, *c) for c in copies))
            storm_end = datetime.now(UTC)
            seconds = time.monotonic() - started
        assert Counter(answers) == {200: len(copies)}

        async with gate.engine.connect() as conn:
            rows = await conn.execute(
                text(
                    "SELECT c.wa_id, w.last_inbound_at, w.closed_by_meta_at FROM windows w "
                    "JOIN customers c ON c.id = w.customer_id WHERE w.phone_number_id = :pn"
                ),
                {"pn": PN},
            )
            windows = {r.wa_id: (r.last_inbound_at, r.closed_by_meta_at) for r in rows}
            sent = await conn.execute(text("SELECT id, status, graph_message_id FROM messages"))
            statuses = {str(r.id): (r.status, r.graph_message_id) for r in sent}
            history = Counter(
                (str(r.message_id), r.status)
                for r in await conn.execute(
                    text(
                        "SELECT message_id, status FROM message_events WHERE status IN ('sent', 'delivered', 'read', 'failed')"
                    )
                )
            )
            customers = (await conn.execute(text("SELECT count(*) FROM customers"))).scalar_one()
            kept = (await conn.execute(text("SELECT count(*) FROM webhook_deliveries"))).scalar_one()
            unapplied = (
                await conn.execute(text("SELECT count(*) FROM webhook_deliveries WHERE error IS NOT NULL"))
            ).scalar_one()

        # Windows: the latest inbound (a timestamp beyond the skew counted from its arrival), the latest
        # 131047; every customer once.
        assert customers == CUSTOMERS
        assert set(windows) == {wa(i) for i in range(CUSTOMERS)}
        for c in clamped:
            assert storm_start - timedelta(seconds=1) <= windows[c][0] <= storm_end + timedelta(seconds=1)
        assert {c: w for c, w in windows.items() if c not in clamped} == {
            c: (last[c], closed.get(c)) for c in ordinary
        }
        # Sends: the furthest status each reached, Meta's id (learnt from the statuses when the answer was
        # lost), each (send, status) in its history once.
        assert statuses == {s["id"]: (furthest[s["id"]], s["wamid"]) for s in sends}
        assert history == Counter(dict.fromkeys(events, 1))
        assert (kept, unapplied) == (len(copies) + KNOWN, 0)  # every delivery kept byte for byte

        # The same through the API: each customer's state as the oracle's rule gives it.
        check = {"phone_number_id": PN, "customers": [wa(i) for i in range(CUSTOMERS)]}
        async with http.post("/v1/windows/check", json=check, headers=key) as r:
            found = {w["customer"]["wa_id"]: w["state"] for w in (await r.json())["windows"]}
        asked = datetime.now(UTC)

        def oracle_state(c: str) -> str:
            if c in clamped:
                return "open"
            if closed.get(c) and closed[c] >= last[c]:
                return "closed_by_meta"
            return "expired" if asked >= last[c] + timedelta(days=1) else "open"

        assert found == {c: oracle_state(c) for c in found} and len(found) == CUSTOMERS

    duplicates = len(copies) - len(payloads)
    print(
        f"\nwebhook storm: {len(payloads)} deliveries + {duplicates} duplicates = {len(copies)} POSTs "
        f"in {seconds:.1f} s ({len(copies) / seconds:.0f}/s), {len(sends)} sends ({meta.lost} answers lost), "
        f"{len(events)} status events, "
        f"{len(closed)} windows closed by Meta"
    )
    assert seconds < 60
