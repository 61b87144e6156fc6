"""Meta failing the way sockets fail, over real sockets (SocketMeta, the gate's own connection pool): each
fault gives the answer and the record the README promises, a retry with the same Idempotency-Key sends
nothing again, and the next send passes."""

import asyncio
import json
import random
from collections import Counter
from collections.abc import AsyncIterator
from dataclasses import dataclass

import httpx
import pytest
from asgi_lifespan import LifespanManager
from sqlalchemy import text

from tests.conftest import assert_problem, bearer, empty, make_key
from tests.factories import PN
from tests.upstream import WA, Act, Gated, SocketMeta, open_window, text_message
from window_gate.app import create_app
from window_gate.config import SANDBOX_APP_SECRET, load_settings

# GRAPH_TIMEOUT_SECONDS here. 2 s, not 1: with 50 sends in flight on two loaded cores the event loop can
# lag over 0.7 s (a CI run saw an answer of 0.3 s time out at 1 s), and which answers time out is what the
# mixed run below asserts, to the request.
TIMEOUT = 2.0


def meta_error(code: int, message: str) -> bytes:
    return json.dumps(
        {"error": {"message": message, "type": "OAuthException", "code": code, "fbtrace_id": "Fault"}}
    ).encode()


@dataclass(frozen=True)
class Fault:
    act: Act
    http: int  # the send's answer
    code: str  # its problem's code
    record: str  # the message's status in the database
    reached: bool  # the request arrived whole at Meta


def failed(act: Act) -> Fault:  # Meta answered: a refusal, recorded as such
    return Fault(act, 502, "upstream_error", "failed", True)


def unknown(act: Act, reached: bool = True) -> Fault:  # may have left: 504, never re-sent
    return Fault(act, 504, "upstream_timeout", "unknown", reached)


FAULTS = {
    "500 with Meta's error": failed(
        Act(status=500, body=meta_error(131000, "(#131000) Something went wrong"))
    ),
    "503 with Meta's error": failed(Act(status=503, body=meta_error(2, "Service temporarily unavailable"))),
    "500 with garbage": failed(Act(status=500, body=b"<html><body>Internal Server Error</body></html>")),
    "503 with garbage": failed(
        Act(status=503, body=b"upstream connect error or disconnect/reset before headers")
    ),
    "200 with garbage": unknown(Act(body=b"<html>maintenance</html>")),
    "no answer within the timeout": unknown(Act("silent")),
    "reset after the request": unknown(Act("reset")),
    "reset before the body was read": unknown(Act("reset_early"), reached=False),
    "closed without an answer": unknown(Act("close")),
    "answer cut mid-body": unknown(Act("cut")),
}


@pytest.fixture
async def socket_meta() -> AsyncIterator[SocketMeta]:
    meta = SocketMeta()
    await meta.up()
    yield meta
    await meta.down()


@pytest.fixture
async def socket_gate(database_url: str, socket_meta: SocketMeta) -> AsyncIterator[Gated]:
    """The app out of sandbox mode, sending through its own connection pool to SocketMeta."""
    settings = load_settings(
        database_url=database_url,
        sandbox=False,
        graph_base_url=socket_meta.url,
        graph_access_token="token",
        app_secret=SANDBOX_APP_SECRET,
        verify_token="verify",
        graph_timeout_seconds=TIMEOUT,
        api_key_cache_seconds=0,
        db_pool_size=5,
    )
    app = create_app(settings)
    async with LifespanManager(app) as manager:
        transport = httpx.ASGITransport(app=manager.app)
        async with httpx.AsyncClient(transport=transport, base_url="http://gate", timeout=30) as client:
            engine = app.state.gate.engine
            client.headers.update(bearer(await make_key(engine)))
            try:
                await open_window(client)
                yield client, engine
            finally:
                await empty(database_url)


async def record_of(gate: Gated, message_id: str) -> tuple[str, object, object]:
    async with gate[1].connect() as conn:
        row = (
            await conn.execute(
                text("SELECT status, error, response FROM messages WHERE id = CAST(:id AS uuid)"),
                {"id": message_id},
            )
        ).one()
    return row.status, row.error, row.response


async def send(client: httpx.AsyncClient, key: str) -> httpx.Response:
    return await client.post("/v1/messages", json=text_message(), headers={"Idempotency-Key": key})


async def graph_send(client: httpx.AsyncClient, key: str) -> httpx.Response:
    body = {"messaging_product": "whatsapp", "to": WA, "type": "text", "text": {"body": "hello"}}
    return await client.post(f"/graph/v25.0/{PN}/messages", json=body, headers={"Idempotency-Key": key})


async def still_healthy(client: httpx.AsyncClient, meta: SocketMeta) -> None:
    meta.plan = lambda _: Act()
    after = await send(client, "after-the-fault")
    assert after.status_code == 201, after.text
    assert after.json()["status"] == "accepted"
    assert (await client.get("/readyz")).status_code == 200


@pytest.mark.parametrize("name", FAULTS)
async def test_each_upstream_fault_answers_records_and_is_never_sent_twice(
    socket_gate: Gated, socket_meta: SocketMeta, name: str
) -> None:
    client, _ = socket_gate
    fault = FAULTS[name]
    socket_meta.plan = lambda _: fault.act
    first = await send(client, "k")
    problem = assert_problem(first, fault.http, fault.code)
    status, error, response = await record_of(socket_gate, str(problem["id"]))
    assert status == fault.record, (status, error)
    assert response is not None and error is not None  # the reason is kept with the record
    if fault.record == "failed":
        assert problem["meta_status"] == fault.act.status  # Meta's HTTP status, its error when readable
        said = json.dumps(problem["meta_error"])  # Meta's error object, else its HTTP status
        assert '"error"' in said or f'"http_status": {fault.act.status}' in said, said
    assert (socket_meta.heads, len(socket_meta.requests)) == (1, int(fault.reached))

    again = await send(client, "k")
    assert (again.status_code, again.json()["id"]) == (first.status_code, problem["id"])
    assert socket_meta.heads == 1  # nothing sent again
    await still_healthy(client, socket_meta)


@pytest.mark.parametrize("name", FAULTS)
async def test_each_upstream_fault_through_the_pass_through_in_metas_shape(
    socket_gate: Gated, socket_meta: SocketMeta, name: str
) -> None:
    """The same faults through `/graph/…`: Meta's own error passed on with its status, any other fault in
    Meta's shape (131000, the gate's code beside it), recorded and never sent twice alike."""
    client, engine = socket_gate
    fault = FAULTS[name]
    socket_meta.plan = lambda _: fault.act
    metas_own = fault.act.body is not None and fault.act.body.startswith(b'{"error"')
    first = await graph_send(client, "g")
    assert first.status_code == (fault.act.status if metas_own else fault.http), first.text
    if metas_own:
        assert first.json() == json.loads(fault.act.body or b"")
    else:
        error = first.json()["error"]
        assert (error["code"], error["window_gate"]["code"]) == (131000, fault.code), error
    async with engine.connect() as conn:
        assert (await conn.execute(text("SELECT status FROM messages"))).scalars().all() == [fault.record]
    again = await graph_send(client, "g")
    assert (again.status_code, socket_meta.heads) == (first.status_code, 1)
    socket_meta.plan = lambda _: Act()
    after = await graph_send(client, "after-the-fault")
    assert after.status_code == 200 and after.json()["messages"][0]["id"].startswith("wamid."), after.text


async def test_a_refused_connection_is_not_sent_and_retried_only_as_a_connection(
    socket_gate: Gated, socket_meta: SocketMeta
) -> None:
    client, _ = socket_gate
    await socket_meta.down()
    first = await send(client, "k")
    problem = assert_problem(first, 502, "upstream_error")
    assert (await record_of(socket_gate, str(problem["id"])))[0] == "not_sent"
    assert socket_meta.heads == 0
    await socket_meta.up()  # the same port again
    again = await send(client, "k")  # the first answer, replayed: the caller decides to send anew
    assert (again.status_code, again.json()["id"]) == (502, problem["id"])
    assert socket_meta.heads == 0
    await still_healthy(client, socket_meta)


async def test_an_answer_just_inside_the_timeout_is_accepted(
    socket_gate: Gated, socket_meta: SocketMeta
) -> None:
    client, _ = socket_gate
    socket_meta.plan = lambda _: Act(delay=TIMEOUT * 0.8)
    r = await send(client, "slow")
    assert r.status_code == 201, r.text
    assert (await record_of(socket_gate, r.json()["id"]))[0] == "accepted"
    assert socket_meta.heads == 1


MIXED = 300  # sends in the seeded run below


@pytest.mark.slow
async def test_mixed_upstream_faults_over_sockets_lose_nothing_and_double_nothing(
    socket_gate: Gated, socket_meta: SocketMeta
) -> None:
    """MIXED concurrent sends, each request meeting a fault of FAULTS or a slow or plain answer at random
    (seeded): every answer is the one its fault calls for, every record agrees with its answer, nothing
    reached Meta twice, retries with the same keys send nothing."""
    client, engine = socket_gate
    rng = random.Random(20261202)
    kinds = [*FAULTS.values(), None, None, None]  # None: a healthy answer, sometimes slow
    acts: list[Fault | None] = []

    def plan(n: int) -> Act:
        fault = rng.choice(kinds)
        acts.append(fault)
        # Slow, but far from the timeout: 50 sends in flight on two loaded cores can lag the loop over
        # half a second (CI runs saw answers of 0.7 and 0.5 × a 1 s timeout time out, and once one of 0.3 ×;
        # hence TIMEOUT); just inside it: test_an_answer_just_inside_the_timeout….
        return fault.act if fault else Act(delay=rng.choice((0.0, 0.0, TIMEOUT * 0.3)))

    socket_meta.plan = plan
    limit = asyncio.Semaphore(50)

    async def one(i: int) -> tuple[int, str]:
        async with limit:
            r = await send(client, f"m{i}")
            return r.status_code, r.json()["id"]

    answers = await asyncio.gather(*(one(i) for i in range(MIXED)))
    assert len(acts) == socket_meta.heads == MIXED  # one request each: nothing retried after it left
    expected = Counter(f.http if f else 201 for f in acts)
    assert Counter(status for status, _ in answers) == expected

    async with engine.connect() as conn:
        records = dict(
            (str(r.id), r.status)
            for r in await conn.execute(
                text("SELECT id, status FROM messages WHERE idempotency_key LIKE 'm%'")
            )
        )
    assert len(records) == MIXED
    agrees = {201: {"accepted"}, 502: {"failed"}, 504: {"unknown"}}
    assert all(records[mid] in agrees[status] for status, mid in answers)
    opaque = Counter(body["biz_opaque_callback_data"] for body in socket_meta.requests)
    assert max(opaque.values()) == 1

    heads = socket_meta.heads
    retried = await asyncio.gather(*(one(i) for i, (status, _) in enumerate(answers) if status != 201))
    assert socket_meta.heads == heads
    assert sorted(retried) == sorted(a for a in answers if a[0] != 201)
    await still_healthy(client, socket_meta)
    injected = sum(f is not None for f in acts)
    print(f"\nupstream faults over sockets: {injected} injected in {MIXED} sends, {injected} survived")
