"""Continue the conversation: a closed window becomes one template, and messages wait for the reply.

Against a counting scripted Meta, on real PostgreSQL. The jobs engine is off: each test runs the release
and the chore itself (message/held.py), so what happens when is the test's to say; one test runs the
engine and waits for it."""

import asyncio
import re
import time
import uuid
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import httpx
import orjson
import pytest
from asgi_lifespan import LifespanManager
from sqlalchemy import text

from tests.conftest import empty, make_key
from tests.factories import PN, delivery, inbound, signed
from tests.jobs import until
from tests.jobs.conftest import JOB_TABLES
from tests.upstream import WA, Gated, Meta, meta_error, open_window, text_message
from window_gate.app import create_app
from window_gate.config import Settings, load_settings
from window_gate.kit import Gate
from window_gate.message import held
from window_gate.message import repository as message_repository
from window_gate.pricing import rules as pricing_rules
from window_gate.pricing import service as pricing_service
from window_gate.pricing.rules import Tables
from window_gate.pricing.service import FreeTiers, month_bounds

TEMPLATE = {"name": "reopen_conversation", "language": {"code": "en"}}
HOLD = {"template": TEMPLATE, "hold_seconds": 3600}


@pytest.fixture
def settings(settings: Settings) -> Settings:
    return settings.model_copy(update={"jobs_in_serve": False})


def held_text(body: str = "hello", **hold: Any) -> dict[str, Any]:
    message = text_message()
    message["text"] = {"body": body}
    return message | {"if_window_closed": HOLD | hold}


def sent_texts(meta: Meta) -> list[str]:
    return [r["text"]["body"] for r in meta.requests if r.get("type") == "text"]


def templates_sent(meta: Meta) -> int:
    return sum(r.get("type") == "template" for r in meta.requests)


async def reply(client: httpx.AsyncClient, wa_id: str = WA) -> None:
    """The customer answers (a signed webhook, now)."""
    await open_window(client, wa_id)


async def release_all(gate: Gate) -> None:
    """What the release jobs and the chore do, run here: every replied wait released."""
    async with gate.engine.begin() as conn:
        await held.watch(conn, 30)
    for shard in range(held.RELEASE_SHARDS):
        await held.release(gate, shard)


async def statuses(client: httpx.AsyncClient, ids: list[str]) -> list[str]:
    return [(await client.get(f"/v1/messages/{i}")).json()["status"] for i in ids]


async def test_open_window_sends_now_and_the_template_is_unused(gate: Gated, meta: Meta) -> None:
    client, _ = gate
    await open_window(client)
    r = await client.post("/v1/messages", json=held_text())
    assert r.status_code == 201, r.text
    assert r.json()["status"] == "accepted"
    assert templates_sent(meta) == 0 and sent_texts(meta) == ["hello"]
    assert "if_window_closed" not in meta.requests[0]  # the gate's option never reaches Meta


async def test_closed_window_sends_one_template_and_holds_the_message(
    gate: Gated, meta: Meta, app_state: tuple[httpx.AsyncClient, Gate]
) -> None:
    client, _ = gate
    r = await client.post("/v1/messages", json=held_text())
    assert r.status_code == 202, r.text
    out = r.json()
    assert out["status"] == "held"
    wait = out["continuation"]
    assert wait["state"] == "awaiting_reply" and wait["held"] == 1
    made = [uuid.UUID(i) for i in (wait["id"], wait["template_message_id"], out["id"])]
    assert [i.version for i in made] == [7, 7, 7] and made == sorted(made)  # the wait, its template, the held
    assert out["pricing_estimate"] is not None and out["pricing_estimate"]["category"] == "marketing"
    assert [r["template"]["name"] for r in meta.requests] == ["reopen_conversation"]
    assert "if_window_closed" not in meta.requests[0]
    template = (await client.get(f"/v1/messages/{wait['template_message_id']}")).json()
    assert template["type"] == "template" and template["status"] == "accepted"
    message = (await client.get(f"/v1/messages/{out['id']}")).json()
    assert message["status"] == "held" and [e["status"] for e in message["history"]] == ["held"]
    conversation = (await client.get(f"/v1/conversations/{PN}/+55 11 98765-4321")).json()
    assert conversation["continuation"]["id"] == wait["id"] and conversation["held"] == [out["id"]]
    assert conversation["window"]["can_send_free_form"] is False


async def test_twenty_concurrent_messages_share_one_template(gate: Gated, meta: Meta) -> None:
    client, _ = gate
    meta.delay = 0.2  # Meta slow: the others arrive while the template is in flight
    answers = await asyncio.gather(*(client.post("/v1/messages", json=held_text(f"m{n}")) for n in range(20)))
    assert [a.status_code for a in answers] == [202] * 20, [a.text for a in answers if a.status_code != 202]
    assert templates_sent(meta) == 1
    assert len({a.json()["continuation"]["id"] for a in answers}) == 1
    priced = [a for a in answers if a.json()["pricing_estimate"] is not None]
    assert len(priced) == 1  # the one that sent the template; the others paid nothing new
    assert sorted(a.json()["continuation"]["held"] for a in answers) == list(range(1, 21))


async def test_the_reply_releases_held_messages_in_order(
    gate: Gated, meta: Meta, app_state: tuple[httpx.AsyncClient, Gate]
) -> None:
    client, _ = gate
    ids = [(await client.post("/v1/messages", json=held_text(f"m{n}"))).json()["id"] for n in range(3)]
    await release_all(app_state[1])
    assert sent_texts(meta) == []  # no reply yet: nothing leaves
    await reply(client)
    await release_all(app_state[1])
    assert sent_texts(meta) == ["m0", "m1", "m2"]
    assert await statuses(client, ids) == ["accepted"] * 3
    history = (await client.get(f"/v1/messages/{ids[0]}")).json()["history"]
    assert [e["status"] for e in history] == ["held", "pending", "accepted"]
    conversation = (await client.get(f"/v1/conversations/{PN}/{WA}")).json()
    assert conversation["continuation"]["state"] == "released" and conversation["held"] == []
    assert conversation["window"]["can_send_free_form"] is True
    await release_all(app_state[1])  # nothing twice
    assert len(sent_texts(meta)) == 3 and templates_sent(meta) == 1


async def test_a_message_meta_refuses_at_release_fails_and_the_others_still_go(
    gate: Gated, meta: Meta, app_state: tuple[httpx.AsyncClient, Gate]
) -> None:
    client, _ = gate
    ids = [(await client.post("/v1/messages", json=held_text(f"m{n}"))).json()["id"] for n in range(3)]
    await reply(client)
    calls = iter([meta_error(131026, "Message undeliverable"), meta.accept, meta.accept])
    meta.reply = lambda request: next(calls)(request)
    await release_all(app_state[1])
    assert await statuses(client, ids) == ["failed", "accepted", "accepted"]


async def test_a_held_message_past_hold_until_expires_and_is_never_sent(
    gate: Gated, meta: Meta, app_state: tuple[httpx.AsyncClient, Gate]
) -> None:
    client, _ = gate
    short = (await client.post("/v1/messages", json=held_text("late", hold_seconds=1))).json()["id"]
    kept = (await client.post("/v1/messages", json=held_text("kept"))).json()["id"]
    await asyncio.sleep(1.1)
    await release_all(app_state[1])
    assert await statuses(client, [short, kept]) == ["expired", "held"]
    await reply(client)
    await release_all(app_state[1])
    assert sent_texts(meta) == ["kept"]


async def test_a_wait_with_nothing_left_ends_and_the_next_message_starts_another(
    gate: Gated, meta: Meta, app_state: tuple[httpx.AsyncClient, Gate]
) -> None:
    client, _ = gate
    first = (await client.post("/v1/messages", json=held_text(hold_seconds=1))).json()
    await asyncio.sleep(1.1)
    await release_all(app_state[1])
    conversation = (await client.get(f"/v1/conversations/{PN}/{WA}")).json()
    assert conversation["continuation"]["state"] == "expired"
    second = (await client.post("/v1/messages", json=held_text())).json()
    assert second["continuation"]["id"] != first["continuation"]["id"] and templates_sent(meta) == 2


async def test_cancel_ends_the_wait_and_nothing_is_sent_after_the_reply(
    gate: Gated, meta: Meta, app_state: tuple[httpx.AsyncClient, Gate]
) -> None:
    client, _ = gate
    ids = [(await client.post("/v1/messages", json=held_text(f"m{n}"))).json()["id"] for n in range(2)]
    r = await client.delete(f"/v1/conversations/{PN}/+55 11 98765-4321/held")
    assert r.status_code == 200 and r.json()["cancelled"] == ids
    assert await statuses(client, ids) == ["cancelled", "cancelled"]
    assert (await client.delete(f"/v1/conversations/{PN}/{WA}/held")).json()["cancelled"] == []
    await reply(client)
    await release_all(app_state[1])
    assert sent_texts(meta) == []
    conversation = (await client.get(f"/v1/conversations/{PN}/{WA}")).json()
    assert conversation["continuation"]["state"] == "cancelled" and conversation["held"] == []


async def test_a_refused_template_answers_as_today_and_holds_nothing(gate: Gated, meta: Meta) -> None:
    client, engine = gate
    meta.reply = meta_error(132001, "Template name does not exist in the translation", 404)
    r = await client.post("/v1/messages", json=held_text())
    assert r.status_code == 422 and r.json()["code"] == "template_not_found", r.text
    async with engine.connect() as conn:
        assert (await conn.execute(text("SELECT count(*) FROM messages WHERE status = 'held'"))).scalar() == 0
        assert (await conn.execute(text("SELECT state FROM continuations"))).scalars().all() == ["failed"]
    meta.reply = meta.accept  # the next request starts a wait of its own
    assert (await client.post("/v1/messages", json=held_text())).status_code == 202


async def test_meta_failing_the_template_later_ends_the_wait(
    gate: Gated, meta: Meta, app_state: tuple[httpx.AsyncClient, Gate]
) -> None:
    client, _ = gate
    out = (await client.post("/v1/messages", json=held_text())).json()
    template_id = out["continuation"]["template_message_id"]
    failed = {
        "id": "wamid.T1",
        "status": "failed",
        "timestamp": str(int(time.time())),
        "recipient_id": WA,
        "biz_opaque_callback_data": f"wg:{template_id}",
        "errors": [{"code": 131026, "title": "Message undeliverable"}],
    }
    body, headers = signed(delivery(statuses=[failed]))
    assert (await client.post("/webhooks/whatsapp", content=body, headers=headers)).status_code == 200
    await release_all(app_state[1])
    message = (await client.get(f"/v1/messages/{out['id']}")).json()
    assert message["status"] == "failed" and message["error"]["error"]["code"] == 131026
    assert message["error"]["code"] == "template_failed"
    conversation = (await client.get(f"/v1/conversations/{PN}/{WA}")).json()
    assert conversation["continuation"]["state"] == "failed"
    await reply(client)
    await release_all(app_state[1])
    assert sent_texts(meta) == [] and templates_sent(meta) == 1  # nothing re-sent by itself


async def test_without_a_template_the_answer_stays_409(gate: Gated, meta: Meta, engine: Any) -> None:
    client, _ = gate
    r = await client.post("/v1/messages", json=text_message() | {"if_window_closed": {}})
    assert r.status_code == 409 and r.json()["code"] == "window_closed"
    await open_window(client, "5511900000000")  # the number is known now
    async with engine.begin() as conn:
        await conn.execute(
            text("UPDATE phone_numbers SET default_reengagement_template = CAST(:t AS jsonb)"),
            {"t": '{"name": "number_default", "language": {"code": "en"}}'},
        )
    r = await client.post("/v1/messages", json=text_message() | {"if_window_closed": {}})
    assert r.status_code == 202, r.text
    assert meta.requests[-1]["template"]["name"] == "number_default"


async def test_a_retry_with_the_same_key_answers_the_same_hold(gate: Gated, meta: Meta) -> None:
    client, _ = gate
    key = {"Idempotency-Key": str(uuid.uuid4())}
    first = await client.post("/v1/messages", json=held_text(), headers=key)
    again = await client.post("/v1/messages", json=held_text(), headers=key)
    assert first.status_code == again.status_code == 202
    assert first.json() == again.json() and templates_sent(meta) == 1


async def test_hold_seconds_out_of_range_is_refused_and_writes_nothing(gate: Gated, meta: Meta) -> None:
    client, engine = gate
    for bad in ({"hold_seconds": 0}, {"hold_seconds": 2_592_001}, {"template": "hello"}, {"other": 1}):
        r = await client.post("/v1/messages", json=text_message() | {"if_window_closed": bad})
        assert r.status_code == 422 and r.json()["code"] == "validation_error", r.text
    assert meta.requests == []
    async with engine.connect() as conn:
        assert (await conn.execute(text("SELECT count(*) FROM messages"))).scalar() == 0


async def test_the_engine_releases_after_the_reply_unasked(
    database_url: str, meta: Meta, upstream: httpx.AsyncBaseTransport
) -> None:
    """With the jobs engine running (as `serve` runs it), the reply's webhook is all it takes."""
    settings = load_settings(
        database_url=database_url, sandbox=True, api_key_cache_seconds=0, graph_timeout_seconds=1
    )
    app = create_app(settings, upstream)
    try:
        async with LifespanManager(app) as manager:
            state: Gate = app.state.gate
            headers = {"Authorization": f"Bearer {await make_key(state.engine)}"}
            async with httpx.AsyncClient(
                transport=httpx.ASGITransport(app=manager.app), base_url="http://gate", headers=headers
            ) as client:
                out = (await client.post("/v1/messages", json=held_text())).json()
                await reply(client)

                async def accepted() -> bool:
                    return await statuses(client, [out["id"]]) == ["accepted"]

                await until(accepted, within=5)  # DESIGN: held messages leave within 5 s of the reply
    finally:
        await empty(database_url)
        await empty(database_url, *JOB_TABLES)


async def test_the_wait_follows_its_customer_through_a_merge(
    gate: Gated, meta: Meta, app_state: tuple[httpx.AsyncClient, Gate]
) -> None:
    """The customer held for is known by phone number; the reply comes from the same person known so
    far only by BSUID, in a message naming both: the two customers merge, and the reply still releases."""
    client, _ = gate
    out = (await client.post("/v1/messages", json=held_text())).json()
    bsuid = "BR.1234567890123456789"
    for message in (inbound(None, user_id=bsuid), inbound(WA, user_id=bsuid)):
        body, headers = signed(
            delivery([message], contacts=[{"wa_id": message.get("from"), "user_id": bsuid}])
        )
        assert (await client.post("/webhooks/whatsapp", content=body, headers=headers)).status_code == 200
    async with app_state[1].engine.connect() as conn:
        customers = (await conn.execute(text("SELECT count(*) FROM customers"))).scalar()
    assert customers == 1  # merged
    await release_all(app_state[1])
    assert await statuses(client, [out["id"]]) == ["accepted"] and sent_texts(meta) == ["hello"]


async def test_two_waits_of_one_person_become_one_when_their_identities_merge(
    gate: Gated, meta: Meta, app_state: tuple[httpx.AsyncClient, Gate]
) -> None:
    client, _ = gate
    bsuid = "BR.1234567890123456789"
    by_phone = (await client.post("/v1/messages", json=held_text("by phone"))).json()
    by_bsuid_body = held_text("by bsuid")
    del by_bsuid_body["to"]
    by_bsuid = await client.post("/v1/messages", json=by_bsuid_body | {"recipient": bsuid})
    assert by_bsuid.status_code == 202, by_bsuid.text
    assert by_bsuid.json()["continuation"]["id"] != by_phone["continuation"]["id"]
    body, headers = signed(delivery([inbound(WA, user_id=bsuid)], contacts=[{"wa_id": WA, "user_id": bsuid}]))
    assert (await client.post("/webhooks/whatsapp", content=body, headers=headers)).status_code == 200
    await release_all(app_state[1])
    assert sorted(sent_texts(meta)) == ["by bsuid", "by phone"]


async def test_a_template_with_no_known_outcome_is_never_sent_twice(gate: Gated, meta: Meta) -> None:
    """Meta does not answer the template in time (504, it may have left): the wait stands; the retry
    with the same Idempotency-Key joins it rather than sending a second template."""
    client, _ = gate
    key = {"Idempotency-Key": "refund-42"}

    def no_answer(request: httpx.Request) -> httpx.Response:
        raise httpx.ReadTimeout("answer never came", request=request)

    meta.reply = no_answer
    first = await client.post("/v1/messages", json=held_text(), headers=key)
    assert first.status_code == 504 and first.json()["code"] == "upstream_timeout", first.text
    meta.reply = meta.accept
    again = await client.post("/v1/messages", json=held_text(), headers=key)
    assert again.status_code == 202, again.text
    assert templates_sent(meta) == 1 and again.json()["pricing_estimate"] is None


async def test_released_and_expired_are_told_to_subscribers_and_counted(
    gate: Gated, meta: Meta, app_state: tuple[httpx.AsyncClient, Gate]
) -> None:
    client, engine = gate
    wanted = {"url": "http://127.0.0.1:9/hook", "events": ["message.released", "message.expired"]}
    assert (await client.post("/v1/subscriptions", json=wanted)).status_code == 201
    before = held_counts((await client.get("/metrics")).text)
    late = (await client.post("/v1/messages", json=held_text("late", hold_seconds=1))).json()["id"]
    kept = (await client.post("/v1/messages", json=held_text("kept"))).json()["id"]
    await asyncio.sleep(1.1)
    await release_all(app_state[1])
    await reply(client)
    await release_all(app_state[1])
    async with engine.connect() as conn:
        rows = (await conn.execute(text("SELECT event_type, body FROM relay_deliveries ORDER BY id"))).all()
    events = [(kind, orjson.loads(body)) for kind, body in rows]
    assert [kind for kind, _ in events] == ["message.expired", "message.released"]
    expired, released = events[0][1], events[1][1]
    assert expired["data"]["message_id"] == late and expired["data"]["status"] == "expired"
    assert released["data"]["message_id"] == kept and released["data"]["status"] == "accepted"
    assert released["data"]["graph_message_id"].startswith("wamid.") and released["customer"]["wa_id"]
    after = held_counts((await client.get("/metrics")).text)
    changed = {k: after[k] - before.get(k, 0) for k in after if after[k] != before.get(k, 0)}
    assert changed == {"started": 1, "joined": 1, "expired": 1, "released": 1}


def held_counts(metrics: str) -> dict[str, float]:
    prefix = 'window_gate_held_messages_total{event="'
    return {
        line[len(prefix) :].split('"')[0]: float(line.rsplit(" ", 1)[1])
        for line in metrics.splitlines()
        if line.startswith(prefix)
    }


async def test_a_wait_s_share_is_the_same_in_python_and_in_sql(engine: Any) -> None:
    """Ingest and the chore enqueue the share's job by shard_of; the job selects its waits in SQL."""
    ids = [uuid.uuid4() for _ in range(64)]
    async with engine.connect() as conn:
        rows = await conn.execute(
            text("SELECT id, get_byte(uuid_send(id), 15) % :n FROM unnest(CAST(:ids AS uuid[])) AS id"),
            {"ids": ids, "n": held.RELEASE_SHARDS},
        )
        assert {row[0]: row[1] for row in rows} == {i: held.shard_of(i) for i in ids}


async def test_the_watch_reaches_each_wait_s_template_by_index(engine: Any) -> None:
    """conversation.watch runs every second over the waits not over: it must find each one's template send
    through an index, never by reading `messages` (every send ever made). With sequential scans priced out,
    a plan that still reads a partition of messages whole has no index to go by (a join on an OR of the
    wait's template id and its Idempotency-Key did, after 0019 moved the keys out of `messages`)."""
    async with engine.begin() as conn:
        query = message_repository.OPEN_WAITS.compile(
            dialect=conn.dialect, compile_kwargs={"literal_binds": True}
        )
        await conn.execute(text("SET LOCAL enable_seqscan = off"))
        plan = "\n".join((await conn.execute(text(f"EXPLAIN {query}"))).scalars())
    assert "messages_default" in plan  # the partitions of messages are in the plan …
    assert not re.search(r"Seq Scan on messages_", plan), plan  # … each reached by an index


async def test_a_share_settles_its_own_waits_only(engine: Any) -> None:
    """The shares' jobs run side by side: one settling another's waits would wait on its rows."""
    await make_key(engine)
    async with engine.begin() as conn:
        key_id = await conn.scalar(text("SELECT id FROM api_keys"))
        customer = await conn.scalar(
            text("INSERT INTO customers (wa_id) VALUES ('15550001111') RETURNING id")
        )
        wait = uuid.uuid4()
        await conn.execute(
            text(
                "INSERT INTO continuations (id, phone_number_id, customer_id, api_key_id, state) "
                "VALUES (:id, :pn, :c, :k, 'replied')"
            ),
            {"id": wait, "pn": PN, "c": customer, "k": key_id},
        )
    own = held.shard_of(wait)

    async def state() -> str:
        async with engine.connect() as conn:
            return str(
                await conn.scalar(text("SELECT state FROM continuations WHERE id = :id"), {"id": wait})
            )

    async with engine.begin() as conn:
        for other in set(range(held.RELEASE_SHARDS)) - {own}:
            await message_repository.settle_released(conn, other, held.RELEASE_SHARDS)
    assert await state() == "replied"
    async with engine.begin() as conn:
        await message_repository.settle_released(conn, own, held.RELEASE_SHARDS)
    assert await state() == "released"


async def test_a_conversation_of_an_unreadable_customer_is_refused_and_nothing_is_written(
    gate: Gated,
) -> None:
    client, engine = gate
    for method in ("GET", "DELETE"):
        suffix = "/held" if method == "DELETE" else ""
        r = await client.request(method, f"/v1/conversations/{PN}/not-a-number{suffix}")
        assert r.status_code == 422 and r.json()["code"] == "invalid_recipient", r.text
        r = await client.request(method, f"/v1/conversations/12ab/{WA}{suffix}")
        assert r.status_code == 422 and r.json()["code"] == "validation_error", r.text
    async with engine.connect() as conn:
        assert (await conn.execute(text("SELECT count(*) FROM customers"))).scalar() == 0


# --- a release round's paid messages: their total reserved at once ------------------------------------
CUSTOMERS = ["15550100001", "15550100002", "15550100003"]  # +1: market North America


def answer_as_addressed(meta: Meta) -> None:
    """Meta answers each recipient's own wa_id: CUSTOMERS stay three people (no alias to learn)."""

    def as_addressed(request: httpx.Request) -> httpx.Response:
        meta.wa_id = orjson.loads(request.content)["to"]
        return meta.accept(request)

    meta.reply = as_addressed


async def hold_paid(client: httpx.AsyncClient, meta: Meta, state: Gate) -> tuple[list[str], Decimal]:
    """A held message for each of CUSTOMERS, released paid (the month's free service tier used up); the
    price of one."""
    answer_as_addressed(meta)
    budget = {"monthly_limit": "100", "currency": "USD"}  # the number's spend counted from the templates on
    assert (await client.put(f"/v1/budgets/phone_number/{PN}", json=budget)).status_code == 200
    ids = [
        (await client.post("/v1/messages", json=held_text() | {"to": to})).json()["id"] for to in CUSTOMERS
    ]
    now = datetime.now(UTC)
    state.part(FreeTiers).used_up.add((PN, "service", month_bounds(now)[0]))
    one = pricing_rules.estimate(
        state.part(Tables),
        category=None,
        recipient=CUSTOMERS[0],
        inside_csw=True,
        inside_fep=False,
        at=now,
        sent_this_month=1000,
    )
    assert one.billable and one.amount > 0
    for wa_id in CUSTOMERS:
        await reply(client, wa_id)
    return ids, one.amount


@pytest.fixture
def totals(monkeypatch: pytest.MonkeyPatch) -> list[tuple[Decimal, bool]]:
    """Each total a release round asked a budget for, and whether it fitted; one share of the waits,
    so that one round holds them all."""
    monkeypatch.setattr(held, "RELEASE_SHARDS", 1)
    asked: list[tuple[Decimal, bool]] = []
    fits = pricing_service.fits

    async def counted(conn: Any, **kw: Any) -> bool:
        asked.append((kw["amount"], fitted := await fits(conn, **kw)))
        return fitted

    monkeypatch.setattr(pricing_service, "fits", counted)
    return asked


async def spent(client: httpx.AsyncClient) -> Decimal:
    budgets = (await client.get("/v1/budgets")).json()["budgets"]
    return Decimal(next(b["spent"] for b in budgets if b["scope"] == "phone_number"))


async def test_a_round_s_paid_messages_are_reserved_together(
    gate: Gated, meta: Meta, app_state: tuple[httpx.AsyncClient, Gate], totals: list[tuple[Decimal, bool]]
) -> None:
    client, _ = gate
    ids, price = await hold_paid(client, meta, app_state[1])
    before = await spent(client)
    await release_all(app_state[1])
    assert await statuses(client, ids) == ["accepted"] * 3
    assert await spent(client) - before == 3 * price
    assert totals == [(3 * price, True)]  # one reservation for the round
    assert sorted(sent_texts(meta)) == ["hello"] * 3


async def test_a_budget_refusing_a_round_s_total_takes_its_messages_one_by_one(
    gate: Gated, meta: Meta, app_state: tuple[httpx.AsyncClient, Gate], totals: list[tuple[Decimal, bool]]
) -> None:
    client, _ = gate
    ids, price = await hold_paid(client, meta, app_state[1])
    before = await spent(client)  # the templates' cost: room left for two of the three held messages
    limit = before + 2 * price + price / 2
    budget = {"monthly_limit": str(limit), "currency": "USD"}
    assert (await client.put(f"/v1/budgets/phone_number/{PN}", json=budget)).status_code == 200
    await release_all(app_state[1])
    assert sorted(await statuses(client, ids)) == ["accepted", "accepted", "failed"]
    failed = next(
        m for m in [(await client.get(f"/v1/messages/{i}")).json() for i in ids] if m["status"] == "failed"
    )
    assert failed["error"]["code"] == "budget_exceeded"
    assert await spent(client) - before == 2 * price  # the refused total counted nothing
    assert totals == [(3 * price, False)]
    assert len(sent_texts(meta)) == 2


async def test_a_wait_merged_away_while_its_template_was_out_holds_its_message_in_the_other(
    gate: Gated, meta: Meta
) -> None:
    """Meta answers the second template with the first customer's wa_id: the two are one person, whose
    wait is the first one's (the second template is spent: Meta said so only in its answer)."""
    client, _ = gate
    first = await client.post("/v1/messages", json=held_text("one") | {"to": "15550100001"})
    second = await client.post("/v1/messages", json=held_text("two") | {"to": "15550100002"})
    assert (first.status_code, second.status_code) == (202, 202), second.text
    assert second.json()["continuation"]["id"] == first.json()["continuation"]["id"]
    assert second.json()["continuation"]["held"] == 2 and templates_sent(meta) == 2


async def test_a_round_whose_answers_cannot_be_written_together_writes_each_alone(
    gate: Gated, meta: Meta, app_state: tuple[httpx.AsyncClient, Gate], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Meta accepted them all; the one round trip for their answers fails: each is written as a single
    send's would be, and each is `accepted`, none sent twice."""
    client, _ = gate
    answer_as_addressed(meta)
    ids = [
        (await client.post("/v1/messages", json=held_text() | {"to": to})).json()["id"] for to in CUSTOMERS
    ]
    for wa_id in CUSTOMERS:
        await reply(client, wa_id)
    tried: list[int] = []

    async def broken(_: object, finals: list[object]) -> None:
        tried.append(len(finals))
        raise ConnectionResetError("the database hung up")

    monkeypatch.setattr(message_repository, "finish_all", broken)
    monkeypatch.setattr(held, "RELEASE_SHARDS", 1)
    await release_all(app_state[1])
    assert tried == [3]
    assert await statuses(client, ids) == ["accepted"] * 3 and len(sent_texts(meta)) == 3


async def test_a_reply_does_not_wait_for_a_round_still_waiting_for_meta(
    gate: Gated, meta: Meta, app_state: tuple[httpx.AsyncClient, Gate], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A round's messages claimed, the share takes the waits answered since while Meta has not answered
    yet; a wait's next message still leaves only after Meta answered the one before."""
    monkeypatch.setattr(held, "RELEASE_SHARDS", 1)
    client, state = app_state
    a, b = CUSTOMERS[:2]
    answer_as_addressed(meta)
    for body, to in (("a0", a), ("a1", a), ("b0", b)):
        assert (await client.post("/v1/messages", json=held_text(body) | {"to": to})).status_code == 202
    await reply(client, a)
    meta.delay = 0.5  # Meta takes its time with every send
    sent_before_answer: dict[str, list[str]] = {}
    addressed = meta.reply

    def answer(request: httpx.Request) -> httpx.Response:
        body = orjson.loads(request.content)["text"]["body"]
        sent_before_answer[body] = sent_texts(meta)
        return addressed(request)

    meta.reply = answer
    release = asyncio.create_task(held.release(state, 0))

    async def a0_out() -> bool:
        return sent_texts(meta) == ["a0"]

    await until(a0_out, within=5, every=0.01)
    await reply(client, b)  # while a0 waits for Meta
    await release
    assert sent_texts(meta) == ["a0", "b0", "a1"]
    assert "b0" in sent_before_answer["a0"]  # b0 did not wait for a0's round
    assert "a1" not in sent_before_answer["a0"]  # a1 waited for Meta's answer to a0
