"""1,000 sends through an upstream that fails at random: nothing lost, nothing sent twice."""

import asyncio
import json
import random
from collections import Counter

import httpx
import pytest
from sqlalchemy import text

from tests.upstream import Gated, Meta, open_window, text_message

pytestmark = pytest.mark.slow  # a thousand sends

SENDS = 1000


class FaultyMeta(Meta):
    """Delivers or not, answers or not, at random (seeded): like a bad day at Meta."""

    def __init__(self) -> None:
        super().__init__()
        self.rng = random.Random(20261125)
        self.delivered: list[str] = []  # biz_opaque_callback_data of every message that "left"

    async def __call__(self, request: httpx.Request) -> httpx.Response:
        body = json.loads(request.content)
        self.requests.append(body)
        roll = self.rng.random()
        if roll < 0.05:
            raise httpx.ConnectError("refused", request=request)  # surely not sent: the gate may retry
        if roll < 0.15:
            error = {"message": "(#131000) Something went wrong", "type": "OAuthException", "code": 131000}
            return httpx.Response(500, json={"error": error})
        self.delivered.append(body["biz_opaque_callback_data"])
        if roll < 0.25:
            raise httpx.ReadTimeout("answer never came", request=request)
        if roll < 0.35:
            raise httpx.RemoteProtocolError("connection dropped", request=request)
        return self.accept(request)


@pytest.fixture
def meta() -> FaultyMeta:
    return FaultyMeta()


async def test_random_upstream_faults_lose_nothing_and_double_nothing(gate: Gated, meta: FaultyMeta) -> None:
    client, engine = gate
    faulty = meta
    await open_window(client)
    limit = asyncio.Semaphore(50)

    async def send(i: int) -> tuple[str, int, str]:
        async with limit:
            r = await client.post("/v1/messages", json=text_message(), headers={"Idempotency-Key": f"k{i}"})
            return f"k{i}", r.status_code, r.json()["id"]

    answers = await asyncio.gather(*(send(i) for i in range(SENDS)))
    # A caller retries everything that did not succeed, with the same key: nothing new may leave.
    delivered_before = len(faulty.delivered)
    retries = await asyncio.gather(*(send(int(k[1:])) for k, status, _ in answers if status != 201))
    assert len(faulty.delivered) == delivered_before
    first = {key: (status, mid) for key, status, mid in answers}
    assert all(first[key] == (status, mid) for key, status, mid in retries)

    async with engine.connect() as conn:
        rows = {
            r.idempotency_key: (r.id, r.status)
            for r in await conn.execute(text("SELECT id, idempotency_key, status FROM messages"))
        }
    assert len(rows) == SENDS  # every accepted request has exactly one record
    expected = {201: {"accepted", "sent", "delivered", "read"}, 504: {"unknown"}, 502: {"failed", "not_sent"}}
    for key, (status, mid) in first.items():
        record_id, record_status = rows[key]
        assert str(record_id) == mid
        assert record_status in expected[status], (key, status, record_status)
    sent_twice = [opaque for opaque, n in Counter(faulty.delivered).items() if n > 1]
    assert sent_twice == []
    statuses = Counter(status for _, status, _ in answers)
    assert statuses[201] and statuses[502] and statuses[504]  # the faults really happened
