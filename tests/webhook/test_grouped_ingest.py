"""What Meta mostly sends, in the grouped statement (webhook/repository.py: INGEST): first messages of new
customers and statuses of the gate's own sends, with no per-customer or per-status round trip, and two
replicas agreeing on one customer."""

import asyncio
from typing import Any

import httpx
import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from tests.factories import delivery, inbound, signed, status
from tests.jobs import until
from tests.upstream import Gated, template_message
from tests.webhook.test_webhooks import HOOK, groups_of, now, other_gate, rows, window
from window_gate import metrics
from window_gate.customer import service as customer_service
from window_gate.kit import Gate
from window_gate.webhook import service
from window_gate.window import repository as windows


def counter(kind: str, outcome: str) -> float:
    return float(metrics.WEBHOOK_MESSAGES.labels(kind, outcome)._value.get())


@pytest.fixture
async def no_slow_path(
    app_state: tuple[httpx.AsyncClient, Gate], monkeypatch: pytest.MonkeyPatch
) -> list[str]:
    """Fails the request if ingest leaves the grouped statement (customer links, the transaction), once
    the test number's account is known (a delivery registers it, in the transaction; the next confirms)."""
    for _ in range(2):
        await post_all(app_state[0], [delivery(statuses=[status(state="sent", code=None)])])
    taken: list[str] = []

    async def refuse(*args: Any, **kwargs: Any) -> None:
        taken.append("slow path")
        raise RuntimeError("the slow path was taken")

    monkeypatch.setattr(service, "_apply_rest", refuse)  # every customer link goes through it
    return taken


def first_message(wa_id: str, bsuid: str | None = None, message_id: str | None = None) -> dict[str, Any]:
    """A new customer's first message, as Meta sends it: contacts pair the wa_id with the BSUID."""
    contact = {"profile": {"name": "Ana"}, "wa_id": wa_id} | ({"user_id": bsuid} if bsuid else {})
    message = inbound(wa_id, ts=now() - 30, message_id=message_id)
    return delivery([message], contacts=[contact])


async def post_all(client: httpx.AsyncClient, payloads: list[dict[str, Any]]) -> None:
    bodies = [signed(p) for p in payloads]
    answers = await asyncio.gather(*(client.post(HOOK, content=b, headers=h) for b, h in bodies))
    assert [r.status_code for r in answers] == [200] * len(payloads), [r.text for r in answers]


async def customers_of(engine: AsyncEngine) -> dict[str, int]:
    return dict(await rows(engine, "SELECT alias, customer_id FROM customer_aliases"))


async def orphans(engine: AsyncEngine) -> int:
    """Customers no alias leads to: made by a loser of a race and left behind."""
    sql = "SELECT count(*) FROM customers c WHERE NOT EXISTS (SELECT FROM customer_aliases a WHERE a.customer_id = c.id)"
    return int((await rows(engine, sql))[0][0])


# --- new customers ---------------------------------------------------------------------------------------


async def test_first_messages_of_new_customers_make_them_in_the_grouped_statement(
    app_state: tuple[httpx.AsyncClient, Gate], admin_headers: dict[str, str], no_slow_path: list[str]
) -> None:
    client, state = app_state
    sizes = groups_of(state)
    people = [(f"1666000{i:04d}", f"US.9{i:08d}" if i % 2 else None) for i in range(30)]
    twice = delivery([inbound("16660009999", ts=now() - 20), inbound("16660009999", ts=now() - 10)])
    await post_all(client, [first_message(wa, bsuid) for wa, bsuid in people] + [twice])
    assert no_slow_path == [] and max(sizes) > 1
    aliases = await customers_of(state.engine)
    made = await rows(state.engine, "SELECT id, wa_id, user_id FROM customers")
    assert len(made) == 31 and await orphans(state.engine) == 0
    by_id = {cid: (wa, user) for cid, wa, user in made}
    for wa, bsuid in people:
        assert by_id[aliases[wa]] == (wa, bsuid)
        if bsuid:
            assert aliases[bsuid] == aliases[wa]
            assert (await window(client, admin_headers, bsuid))["state"] == "open"
        assert (await window(client, admin_headers, wa))["state"] == "open"
    assert len(await rows(state.engine, "SELECT 1 FROM inbound_messages")) == 32


async def test_a_known_customers_new_bsuid_is_linked_in_the_grouped_statement(
    app_state: tuple[httpx.AsyncClient, Gate], admin_headers: dict[str, str], no_slow_path: list[str]
) -> None:
    client, state = app_state
    await post_all(client, [first_message("16660000001")])
    await post_all(client, [first_message("16660000001", "US.777")])
    assert no_slow_path == []
    assert await rows(state.engine, "SELECT wa_id, user_id FROM customers") == [("16660000001", "US.777")]
    aliases = await customers_of(state.engine)
    assert aliases["US.777"] == aliases["16660000001"]
    assert (await window(client, admin_headers, "US.777"))["state"] == "open"


async def test_identities_sharing_a_new_alias_in_one_group_take_the_slow_path_and_agree(
    app_state: tuple[httpx.AsyncClient, Gate], admin_headers: dict[str, str]
) -> None:
    """Two identities of one group lacking the same alias (the wa_id alone, and with its BSUID): neither
    is made by the statement; the slow path makes one customer of both."""
    client, state = app_state
    both = delivery(
        [inbound("16660000002", ts=now() - 5)], contacts=[{"wa_id": "16660000002", "user_id": "US.5"}]
    )
    alone = delivery([inbound("16660000002", ts=now() - 9)], contacts=[{"wa_id": "16660000002"}])
    await post_all(client, [both, alone])
    assert len(await rows(state.engine, "SELECT 1 FROM customers")) == 1 and await orphans(state.engine) == 0
    assert len(set((await customers_of(state.engine)).values())) == 1
    assert len(await rows(state.engine, "SELECT 1 FROM inbound_messages")) == 2


async def test_the_same_new_customers_on_two_replicas_make_one_customer_each(
    app_state: tuple[httpx.AsyncClient, Gate], database_url: str
) -> None:
    """Two replicas (two apps, two pools) get the first messages of the same new customers at once, with
    and without the BSUID and from the BSUID alone: one customer each, every message applied, no orphan."""
    client, state = app_state
    people = [(f"1777000{i:04d}", f"US.8{i:08d}") for i in range(40)]

    pairs = [first_message(wa, bsuid, f"wamid.{wa}.pair") for wa, bsuid in people]
    halves = [  # the wa_id alone, or the BSUID alone
        first_message(wa, None, f"wamid.{wa}.wa")
        if i % 2
        else delivery(
            [inbound(None, user_id=bsuid, ts=now() - 30, message_id=f"wamid.{wa}.bsuid")],
            contacts=[{"user_id": bsuid}],
        )
        for i, (wa, bsuid) in enumerate(people)
    ]
    async with other_gate(database_url, sandbox=True) as second:
        await asyncio.gather(post_all(client, pairs), post_all(second, halves))
    aliases = await customers_of(state.engine)
    for wa, bsuid in people:
        assert aliases[wa] == aliases[bsuid], wa
    assert len(await rows(state.engine, "SELECT 1 FROM customers")) == len(people)
    assert await orphans(state.engine) == 0
    assert len(await rows(state.engine, "SELECT 1 FROM inbound_messages")) == 2 * len(people)
    assert len(await rows(state.engine, "SELECT 1 FROM windows")) == len(people)


# --- statuses ---------------------------------------------------------------------------------------------


async def sends(gate: Gated, n: int) -> list[dict[str, Any]]:
    client, _ = gate
    answers = [await client.post("/v1/messages", json=template_message()) for _ in range(n)]
    assert [r.status_code for r in answers] == [201] * n, answers[0].text
    return [r.json() for r in answers]


def status_of(sent: dict[str, Any], state: str, *, own_id: bool = True, **extra: Any) -> dict[str, Any]:
    st = status(sent["recipient"]["wa_id"], state=state, code=None) | {"id": sent["graph_message_id"]} | extra
    return st | ({"biz_opaque_callback_data": f"wg:{sent['id']}"} if own_id else {})


async def history(client: httpx.AsyncClient, sent: dict[str, Any]) -> tuple[str, list[str]]:
    record = (await client.get(f"/v1/messages/{sent['id']}")).json()
    return record["status"], [e["status"] for e in record["history"]]


async def test_statuses_of_one_group_fold_in_arrival_order(
    gate: Gated, app_state: tuple[httpx.AsyncClient, Gate], no_slow_path: list[str]
) -> None:
    """Several statuses of one message in one statement: each kept in its history, the status moved as
    if they came one by one (failed and delivered exclude each other: the first wins)."""
    client, _ = gate
    a, b, c, d = await sends(gate, 4)
    pricing = {"billable": True, "category": "utility", "pricing_model": "PMP", "type": "regular"}
    statuses = [
        status_of(a, "sent", pricing=pricing),
        status_of(a, "delivered"),
        status_of(a, "read"),
        status_of(b, "failed", errors=[{"code": 131026, "title": "Message undeliverable"}]),
        status_of(b, "delivered"),
        status_of(c, "delivered", own_id=False),  # found by Meta's wamid
        status_of(c, "failed", own_id=False),
        status_of(d, "read"),
        status_of(d, "sent"),  # late: moves nothing back
        status(state="delivered", code=None),  # not the gate's
    ]
    counted = ("status_delivered", "unknown_message"), ("status_read", "recorded")
    before = [counter(*labels) for labels in counted]
    body, headers = signed(delivery(statuses=statuses))
    assert (await client.post(HOOK, content=body, headers=headers)).status_code == 200
    assert no_slow_path == []
    assert [counter(*labels) - n for labels, n in zip(counted, before, strict=True)] == [1, 2]
    early = ["pending", "accepted"]
    assert await history(client, a) == ("read", [*early, "sent", "delivered", "read"])
    assert await history(client, b) == ("failed", [*early, "failed", "delivered"])
    assert await history(client, c) == ("delivered", [*early, "delivered", "failed"])
    assert await history(client, d) == ("read", [*early, "read", "sent"])
    record = (await client.get(f"/v1/messages/{a['id']}")).json()
    assert record["pricing"] == pricing
    assert (await client.get(f"/v1/messages/{b['id']}")).json()["error"]["code"] == 131026


async def test_a_status_delivered_again_is_kept_once(gate: Gated, no_slow_path: list[str]) -> None:
    """Meta delivers again what it thinks was lost: the history keeps each status once."""
    client, _ = gate
    [sent] = await sends(gate, 1)
    sent_status, read = status_of(sent, "sent"), status_of(sent, "read")
    for payload in (delivery(statuses=[sent_status, sent_status]), delivery(statuses=[sent_status, read])):
        body, headers = signed(payload)
        assert (await client.post(HOOK, content=body, headers=headers)).status_code == 200
    assert await history(client, sent) == ("read", ["pending", "accepted", "sent", "read"])


async def test_a_copy_of_a_status_recorded_by_a_concurrent_statement_is_kept_once(
    gate: Gated, app_state: tuple[httpx.AsyncClient, Gate]
) -> None:
    """Two groups (two lanes, two replicas) may hold copies of one status at once. The second's statement
    sees only what was committed when it began, so a check for the status already recorded could not see
    the first's: the history's key (message, status, at) keeps it once (migration 0019)."""
    client, state = app_state
    [sent] = await sends(gate, 1)
    at = now() - 5
    async with state.engine.connect() as first:  # the first group, not yet committed: it holds the message
        await first.execute(text("SELECT FROM messages WHERE id = :id FOR UPDATE"), {"id": sent["id"]})
        await first.execute(
            text(
                "INSERT INTO message_events (phone_number_id, message_id, status, at) "
                "SELECT phone_number_id, id, 'sent', to_timestamp(:at) FROM messages WHERE id = :id"
            ),
            {"id": sent["id"], "at": at},
        )
        body, headers = signed(delivery(statuses=[status_of(sent, "sent", timestamp=str(at))]))
        second = asyncio.create_task(client.post(HOOK, content=body, headers=headers))
        await asyncio.sleep(0.5)
        assert not second.done()  # waiting for the first
        await first.commit()
    assert (await second).status_code == 200
    assert (await history(client, sent))[1] == ["pending", "accepted", "sent"]


async def test_status_deliveries_arriving_together_share_a_statement(
    gate: Gated, app_state: tuple[httpx.AsyncClient, Gate], no_slow_path: list[str]
) -> None:
    client, state = app_state
    sent = await sends(gate, 10)
    sizes = groups_of(state)
    await post_all(
        client, [delivery(statuses=[status_of(s, kind)]) for kind in ("sent", "delivered") for s in sent]
    )
    assert no_slow_path == [] and max(sizes) > 1 and sum(sizes) == 20
    for s in sent:
        assert (await history(client, s))[1][2:] in (["sent", "delivered"], ["delivered", "sent"])
        assert (await history(client, s))[0] == "delivered"


async def test_sixteen_single_events_waiting_open_a_second_statement_beside_the_one_in_flight(
    app_state: tuple[httpx.AsyncClient, Gate],
) -> None:
    """Under load single deliveries do not wait for the statement in flight once 16 events wait (README,
    Performance: single statuses 2,569–2,830 → 3,238–3,325 /s); 15 still wait for it."""
    client, state = app_state
    recorder = state.part(service.DeliveryRecorder)
    run, in_flight, release = recorder.run, asyncio.Event(), asyncio.Event()
    groups: list[int] = []

    async def first_held(items: list[Any]) -> list[Any]:
        groups.append(len(items))
        if len(groups) == 1:  # the statement in flight, until the test lets it go
            in_flight.set()
            await release.wait()
        return await run(items)

    async def waiting(n: int) -> bool:
        return len(recorder.waiting) == n

    async def second_statement() -> bool:
        return len(groups) == 2

    recorder.run = first_held
    messages = [delivery([inbound(f"55119{n:08d}", ts=now() - 30)]) for n in range(17)]
    posted = [asyncio.create_task(post_all(client, [messages[0]]))]
    await in_flight.wait()
    posted.append(asyncio.create_task(post_all(client, messages[1:16])))
    await until(lambda: waiting(15), within=10)
    await asyncio.sleep(0.1)
    assert groups == [1]  # 15 waiting: they wait for the statement in flight
    posted.append(asyncio.create_task(post_all(client, messages[16:])))
    await until(second_statement, within=10)
    assert groups == [1, 16] and not release.is_set()  # the 16th opened a second statement at once
    release.set()
    await asyncio.gather(*posted)
    stored = await rows(state.engine, "SELECT count(*) FROM inbound_messages")
    assert stored[0][0] == 17


async def test_two_replicas_moving_the_same_messages_in_opposite_orders_do_not_deadlock(
    gate: Gated, database_url: str
) -> None:
    """Each replica's group locks its messages in one order (by id): batches of the same messages in
    opposite orders, at once, all go through."""
    client, _ = gate
    sent = await sends(gate, 30)

    forward = [
        delivery(statuses=[status_of(s, "delivered", timestamp=str(now() + k)) for s in sent])
        for k in range(5)
    ]
    backward = [
        delivery(statuses=[status_of(s, "read", timestamp=str(now() + k)) for s in reversed(sent)])
        for k in range(5)
    ]
    async with other_gate(database_url, sandbox=True) as second:
        await asyncio.gather(post_all(client, forward), post_all(second, backward))
    for s in sent:
        state, events = await history(client, s)
        assert state == "read" and len(events) == 2 + 10


async def test_a_link_racing_the_statement_waits_for_it_and_finds_its_customer(
    app_state: tuple[httpx.AsyncClient, Gate],
) -> None:
    """The statement holds the advisory locks the slow path's link takes until it commits: a link of the
    customer it is making (on another replica) waits, then finds that customer instead of failing on
    its wa_id. The statement is held mid-way here by a window row another transaction has locked."""
    client, state = app_state
    await post_all(client, [first_message("16660000001")])  # a known customer, with a window
    async with state.engine.begin() as blocker:
        await blocker.execute(text("SELECT * FROM windows FOR UPDATE"))
        both = delivery([inbound("16660000001", ts=now() - 5), inbound("16660000077", ts=now() - 5)])
        ingest = asyncio.create_task(post_all(client, [both]))
        await asyncio.sleep(0.5)

        async def link() -> int:
            async with state.engine.begin() as conn:
                return await customer_service.link(
                    conn, "16660000077", None, "send", also_move=windows.move_windows
                )

        linking = asyncio.create_task(link())
        await asyncio.sleep(0.5)
        assert not ingest.done() and not linking.done()
    await ingest
    made = await linking
    assert await rows(
        state.engine, "SELECT customer_id FROM customer_aliases WHERE alias = '16660000077'"
    ) == [(made,)]
    assert len(await rows(state.engine, "SELECT 1 FROM customers")) == 2


async def test_a_status_postgresql_refuses_is_kept_unapplied_alone(
    gate: Gated, app_state: tuple[httpx.AsyncClient, Gate]
) -> None:
    """A NUL in a status (jsonb refuses it) arriving with good ones: its delivery is kept with the reason
    and moves nothing; the others of its group are applied."""
    client, state = app_state
    bad_one, *good = await sends(gate, 6)
    sizes = groups_of(state)
    bad = delivery(statuses=[status_of(bad_one, "delivered", note="a\u0000b")])
    await post_all(client, [bad] + [delivery(statuses=[status_of(s, "delivered")]) for s in good])
    assert max(sizes) > 1
    assert await history(client, bad_one) == ("accepted", ["pending", "accepted"])
    for s in good:
        assert await history(client, s) == ("delivered", ["pending", "accepted", "delivered"])
    kept = await rows(state.engine, "SELECT error FROM webhook_deliveries WHERE error IS NOT NULL")
    assert len(kept) == 1 and kept[0][0].startswith("UntranslatableCharacterError")


async def test_a_customer_merged_away_under_the_statement_is_found_again(
    app_state: tuple[httpx.AsyncClient, Gate],
) -> None:
    """A send learns that two customers are one account (Meta's wa_id for a spelling) and merges them while
    a delivery's statement, having found the one merged away, waits: the statement runs again and applies
    the message to the customer it was merged into. (Once kept unapplied, though answered 200: found by
    the SIGKILL test, tests/message/test_e2e_sending.py.) Here the statement waits for the advisory lock of
    a new customer's wa_id, which another transaction holds."""
    client, state = app_state
    for wa_id in ("16660000001", "16660000002"):  # in turn: the second is the one merged away (higher id)
        await post_all(client, [first_message(wa_id)])
    survivor = (await customers_of(state.engine))["16660000001"]
    message = inbound("16660000002", ts=now() - 5)
    async with state.engine.connect() as blocker:
        held = await blocker.begin()
        await blocker.execute(text("SELECT pg_advisory_xact_lock(hashtext('16660000099'))"))
        ingest = asyncio.create_task(post_all(client, [delivery([message, inbound("16660000099")])]))
        await asyncio.sleep(0.5)
        async with state.engine.begin() as conn:  # as message/service.py's _learn_alias does
            merged = await customer_service.link(
                conn, "16660000001", None, "send", aliases=["16660000002"], also_move=windows.move_windows
            )
        assert merged == survivor and not ingest.done()
        await held.rollback()
    await ingest
    applied = await rows(
        state.engine, "SELECT customer_id FROM inbound_messages WHERE message_id = :id", id=message["id"]
    )
    assert applied == [(survivor,)]
    assert await rows(state.engine, "SELECT error FROM webhook_deliveries WHERE error IS NOT NULL") == []
