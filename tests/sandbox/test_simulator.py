"""The Graph API simulator: Meta's shapes, its window verdicts, throttling, templates, faults, and the loop
into the real gate. Webhooks are caught by a fake receiver that checks every signature."""

import asyncio
import time
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AsyncExitStack
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
from asgi_lifespan import LifespanManager

from tests.conftest import empty, make_key
from tests.factories import PN
from window_gate import cli, db
from window_gate.apikey.rules import Role
from window_gate.app import create_app
from window_gate.config import SANDBOX_APP_SECRET, load_settings
from window_gate.sandbox import SimulatorConfig, SimulatorState, create_simulator, in_process, simulator_state
from window_gate.sandbox import state as sandbox_state
from window_gate.sandbox.cli import post_inbound
from window_gate.webhook.signature import verify

CUSTOMER = "+55 11 98765-4321"
CUSTOMER_WA_ID = "551187654321"  # Brazil's ninth digit dropped, as the simulator documents
WABA = SimulatorConfig().waba_id
HOOK_URL = "http://gate.test/webhooks/whatsapp"
TOKEN = {"Authorization": "Bearer any-token"}


@dataclass
class Receiver:
    """The gate's webhook endpoint, faked: keeps what arrives and whether it was well signed."""

    payloads: list[dict[str, Any]] = field(default_factory=list)
    bad_signatures: int = 0

    def transport(self) -> httpx.MockTransport:
        def handle(request: httpx.Request) -> httpx.Response:
            signature = request.headers.get("x-hub-signature-256")
            if not verify(signature, request.content, [SANDBOX_APP_SECRET.encode()]):
                self.bad_signatures += 1
                return httpx.Response(401)
            self.payloads.append(orjson.loads(request.content))
            return httpx.Response(200)

        return httpx.MockTransport(handle)

    def values(self) -> list[dict[str, Any]]:
        return [c["value"] for p in self.payloads for e in p["entry"] for c in e["changes"]]

    def statuses(self) -> list[dict[str, Any]]:
        return [s for v in self.values() for s in v.get("statuses", [])]


@dataclass
class Sim:
    client: httpx.AsyncClient
    state: SimulatorState
    receiver: Receiver

    async def send(self, body: dict[str, Any], pn: str = PN) -> httpx.Response:
        return await self.client.post(f"/v25.0/{pn}/messages", json=body, headers=TOKEN)

    async def inbound(self, sender: str = CUSTOMER, **extra: Any) -> httpx.Response:
        r = await self.client.post("/sandbox/inbound", json={"phone_number_id": PN, "from": sender, **extra})
        assert r.status_code == 200, r.text
        return r


OpenSim = Callable[..., Awaitable[Sim]]


@pytest.fixture
async def open_sim() -> AsyncIterator[OpenSim]:
    """Build a simulator (config overrides as keywords) wired to a fresh fake receiver."""
    async with AsyncExitStack() as stack:

        async def open_(**overrides: Any) -> Sim:
            receiver = Receiver()
            config: dict[str, Any] = {
                "webhook_url": HOOK_URL,
                "webhook_transport": receiver.transport(),
                "status_delays": (0.0, 0.0, 0.0),
                "webhook_retry_delays": (0.01,),
            }
            app = create_simulator(SimulatorConfig(**(config | overrides)))
            state = simulator_state(app)
            stack.push_async_callback(state.aclose)
            transport = httpx.ASGITransport(app=app)
            client = await stack.enter_async_context(
                httpx.AsyncClient(transport=transport, base_url="http://sim")
            )
            return Sim(client, state, receiver)

        yield open_


@pytest.fixture
async def sim(open_sim: OpenSim) -> Sim:
    return await open_sim()


def text(to: str = CUSTOMER, **extra: Any) -> dict[str, Any]:
    body = {"messaging_product": "whatsapp", "recipient_type": "individual", "to": to, "type": "text"}
    return body | {"text": {"body": "Your order shipped"}} | extra


def template(
    name: str = "hello_world", language: str = "en_US", *params: str, **extra: Any
) -> dict[str, Any]:
    content: dict[str, Any] = {"name": name, "language": {"code": language}}
    if params:
        content["components"] = [
            {"type": "body", "parameters": [{"type": "text", "text": p} for p in params]}
        ]
    return {"messaging_product": "whatsapp", "to": CUSTOMER, "type": "template", "template": content} | extra


def meta_error(r: httpx.Response, status: int, code: int) -> dict[str, Any]:
    assert r.status_code == status, r.text
    error: dict[str, Any] = r.json()["error"]
    assert error["code"] == code and error["type"] == "OAuthException"
    assert error["message"].startswith(f"(#{code}) ") and error["fbtrace_id"]
    return error


async def test_send_answers_metas_shape_with_a_sandbox_wamid(sim: Sim) -> None:
    r = await sim.send(template())
    assert r.status_code == 200, r.text
    assert r.headers["x-sandbox"] == "true"
    answer = r.json()
    assert answer["messaging_product"] == "whatsapp"
    assert answer["contacts"] == [{"input": CUSTOMER, "wa_id": CUSTOMER_WA_ID}]
    [message] = answer["messages"]
    assert message["id"].startswith("wamid.SANDBOX") and message["message_status"] == "accepted"
    second = (await sim.send(template())).json()["messages"][0]["id"]
    assert second != message["id"]


async def test_every_answer_is_marked_sandbox(sim: Sim) -> None:
    for r in (await sim.client.get("/sandbox/stats"), await sim.client.get("/nowhere")):
        assert r.headers["x-sandbox"] == "true"


async def test_send_without_token_is_refused_like_meta(sim: Sim) -> None:
    r = await sim.client.post(f"/v25.0/{PN}/messages", json=text())
    meta_error(r, 401, 190)
    assert "OAuth" in r.headers["www-authenticate"]


@pytest.mark.parametrize(
    ("body", "mentions"),
    [
        (text() | {"messaging_product": "sms"}, "messaging_product"),
        ({k: v for k, v in text().items() if k != "to"}, "to"),
        (text() | {"text": {}}, "text['body']"),
        (text() | {"type": "carrier_pigeon"}, "type"),
        (text(to="call me maybe"), "to"),
        (text(biz_opaque_callback_data="x" * 513), "biz_opaque_callback_data"),
        (
            {"messaging_product": "whatsapp", "to": CUSTOMER, "type": "template", "template": {"name": "x"}},
            "language",
        ),
    ],
)
async def test_invalid_body_answers_metas_code_100(sim: Sim, body: dict[str, Any], mentions: str) -> None:
    error = meta_error(await sim.send(body), 400, 100)
    assert error["error_data"]["messaging_product"] == "whatsapp"
    assert mentions in error["error_data"]["details"]
    assert sim.state.stats()["accepted"] == 0


async def test_free_form_inside_the_window_is_sent_delivered_read(sim: Sim) -> None:
    await sim.inbound(text="where is my order?")
    r = await sim.send(text(biz_opaque_callback_data="gate-msg-1"))
    wamid = r.json()["messages"][0]["id"]
    await sim.state.idle()
    statuses = sim.receiver.statuses()
    assert [s["status"] for s in statuses] == ["sent", "delivered", "read"]
    assert sim.receiver.bad_signatures == 0
    for s in statuses:
        assert s["id"] == wamid and s["recipient_id"] == CUSTOMER_WA_ID
        assert s["biz_opaque_callback_data"] == "gate-msg-1"
        assert s["pricing"] == {
            "billable": False,
            "pricing_model": "PMP",
            "category": "service",
            "type": "free_customer_service",
        }
        assert "conversation" not in s  # Graph v24+: only inside a free-entry-point window
    delivery = sim.receiver.payloads[-1]
    assert delivery["object"] == "whatsapp_business_account" and delivery["entry"][0]["id"] == WABA
    change = delivery["entry"][0]["changes"][0]
    assert change["field"] == "messages" and change["value"]["metadata"]["phone_number_id"] == PN


async def test_free_form_after_25h_fails_with_131047(sim: Sim) -> None:
    await sim.inbound()
    r = await sim.client.post("/sandbox/clock", json={"advance_seconds": 25 * 3600})
    assert r.json()["offset_seconds"] == 25 * 3600
    r = await sim.send(text(biz_opaque_callback_data="gate-msg-2"))
    assert r.status_code == 200, r.text  # accepted synchronously, as Meta does
    await sim.state.idle()
    [failed] = sim.receiver.statuses()
    assert failed["status"] == "failed" and failed["id"] == r.json()["messages"][0]["id"]
    assert failed["biz_opaque_callback_data"] == "gate-msg-2" and "pricing" not in failed
    assert failed["errors"] == [
        {
            "code": 131047,
            "title": "Re-engagement message",
            "message": "Re-engagement message",
            "error_data": {
                "details": "Message failed to send because more than 24 hours have passed since the customer "
                "last replied to this number."
            },
            "href": "https://developers.facebook.com/docs/whatsapp/cloud-api/support/error-codes/",
        }
    ]


async def test_template_passes_outside_the_window(sim: Sim) -> None:
    r = await sim.send(template("order_update", "en", "Ana", "#1234"))
    assert r.status_code == 200, r.text
    await sim.state.idle()
    statuses = sim.receiver.statuses()
    assert [s["status"] for s in statuses] == ["sent", "delivered", "read"]
    assert statuses[0]["pricing"] == {
        "billable": True,
        "pricing_model": "PMP",
        "category": "utility",
        "type": "regular",
    }


REFERRAL = {
    "source_url": "https://fb.me/3cr4Wqqkv",
    "source_id": "120211111111111111",
    "source_type": "ad",
    "headline": "Spring sale",
    "body": "20% off",
    "media_type": "image",
    "ctwa_clid": "ARAkxyz",
}
FREE_ENTRY_POINT = {
    "billable": False,
    "pricing_model": "PMP",
    "category": "referral_conversion",
    "type": "free_entry_point",
}


async def test_reply_to_an_ad_click_starts_a_free_entry_point_priced_as_meta_does(sim: Sim) -> None:
    await sim.inbound(referral=REFERRAL)
    await sim.client.post("/sandbox/clock", json={"advance_seconds": 3600})
    replied = sim.state.now()
    await sim.send(template("spring_sale", "en", "Ana"))
    await sim.state.idle()
    statuses = sim.receiver.statuses()
    assert [s["status"] for s in statuses] == ["sent", "delivered", "read"]
    assert all(s["pricing"] == FREE_ENTRY_POINT for s in statuses)
    assert all(s["conversation"]["origin"] == {"type": "referral_conversion"} for s in statuses)
    assert len({s["conversation"]["id"] for s in statuses}) == 1
    ends = int(statuses[0]["conversation"]["expiration_timestamp"])  # on `sent` only
    assert abs(ends - (replied + timedelta(hours=72)).timestamp()) < 2
    assert "expiration_timestamp" not in statuses[1]["conversation"]

    # 25 h on the service window has closed, the free one runs: a template is still free, same window.
    await sim.client.post("/sandbox/clock", json={"advance_seconds": 25 * 3600})
    await sim.send(template("spring_sale", "en", "Ana"))
    await sim.state.idle()
    later = sim.receiver.statuses()[3:]
    assert later[0]["pricing"] == FREE_ENTRY_POINT
    assert later[0]["conversation"]["id"] == statuses[0]["conversation"]["id"]
    # Past its 72 h: paid again, no conversation object.
    await sim.client.post("/sandbox/clock", json={"advance_seconds": 48 * 3600})
    await sim.send(template("spring_sale", "en", "Ana"))
    await sim.state.idle()
    last = sim.receiver.statuses()[6:]
    assert last[0]["pricing"]["type"] == "regular" and "conversation" not in last[0]


async def test_no_free_entry_point_without_an_ad_click_or_after_24h(sim: Sim) -> None:
    await sim.inbound()  # no referral
    await sim.send(template("spring_sale", "en", "Ana"))
    await sim.inbound("+1 415 555 0100", referral=REFERRAL, ago_seconds=25 * 3600)  # replied too late
    await sim.send(template("spring_sale", "en", "Ana", to="+1 415 555 0100"))
    await sim.state.idle()
    sent = [s for s in sim.receiver.statuses() if s["status"] == "sent"]
    assert [s["pricing"]["category"] for s in sent] == ["marketing", "marketing"]
    assert all(s["pricing"]["type"] == "regular" and "conversation" not in s for s in sent)


async def test_reset_forgets_the_window(sim: Sim) -> None:
    await sim.inbound()
    await sim.client.post("/sandbox/reset")
    await sim.send(text())
    await sim.state.idle()
    assert [s["status"] for s in sim.receiver.statuses()] == ["failed"]
    assert sim.state.stats()["sends"] == 1


async def test_bsuid_recipient_uses_the_window_of_that_user(sim: Sim) -> None:
    bsuid = "US.13491208655302741918"
    await sim.client.post("/sandbox/inbound", json={"phone_number_id": PN, "user_id": bsuid})
    body = {k: v for k, v in text().items() if k != "to"} | {"recipient": bsuid}
    r = await sim.send(body)
    assert r.json()["contacts"] == [{"input": bsuid, "user_id": bsuid}]
    await sim.state.idle()
    statuses = sim.receiver.statuses()
    assert [s["status"] for s in statuses] == ["sent", "delivered", "read"]
    assert statuses[0]["recipient_user_id"] == bsuid and "recipient_id" not in statuses[0]


@pytest.mark.parametrize(
    ("body", "status", "code"),
    [
        (template("no_such_template"), 404, 132001),
        (template("hello_world", "pt_BR"), 404, 132001),
        (template("old_promo", "en"), 400, 132015),
        (template("legacy_notice", "en"), 400, 132016),
        (template("order_update", "en", "Ana"), 400, 132000),
        (template("hello_world", "en_US", "unexpected"), 400, 132000),
    ],
)
async def test_template_checks_answer_metas_codes(
    sim: Sim, body: dict[str, Any], status: int, code: int
) -> None:
    meta_error(await sim.send(body), status, code)
    await sim.state.idle()
    assert sim.receiver.payloads == []
    assert sim.state.stats()["errors"] == {str(code): 1}


async def test_over_the_throughput_answers_130429(open_sim: OpenSim) -> None:
    now = [1000.0]
    sim = await open_sim(throughput_per_second=2, monotonic=lambda: now[0])
    assert [(await sim.send(template())).status_code for _ in range(2)] == [200, 200]
    error = meta_error(await sim.send(template()), 400, 130429)
    assert error["error_data"]["details"] == "Cloud API message throughput has been reached."
    assert (await sim.send(template(), pn="other-number")).status_code == 200  # per phone number
    now[0] += 1.0  # the sliding second has passed
    assert (await sim.send(template())).status_code == 200


async def test_templates_are_listed_with_metas_cursor_paging(sim: Sim) -> None:
    url: str | None = f"/v25.0/{WABA}/message_templates?limit=2"
    pages = []
    while url:
        r = await sim.client.get(url, headers=TOKEN)
        assert r.status_code == 200, r.text
        pages.append(r.json())
        url = r.json()["paging"].get("next")
    names = [t["name"] for p in pages for t in p["data"]]
    assert names == ["hello_world", "order_update", "spring_sale", "old_promo", "legacy_notice"]
    assert [len(p["data"]) for p in pages] == [2, 2, 1]
    assert "previous" not in pages[0]["paging"] and "next" not in pages[-1]["paging"]
    first = pages[0]["data"][0]
    assert set(first) == {"id", "name", "language", "status", "category", "parameter_format", "components"}
    back = await sim.client.get(pages[1]["paging"]["previous"], headers=TOKEN)
    assert back.json()["data"] == pages[0]["data"]
    before = pages[1]["paging"]["cursors"]["before"]
    r = await sim.client.get(f"/v25.0/{WABA}/message_templates?limit=5&before={before}", headers=TOKEN)
    assert [t["name"] for t in r.json()["data"]] == names[:2]

    r = await sim.client.get(
        f"/v25.0/{WABA}/message_templates?fields=name,status&status=PAUSED", headers=TOKEN
    )
    assert r.json()["data"] == [{"id": "1000000000000004", "name": "old_promo", "status": "PAUSED"}]
    meta_error(await sim.client.get("/v25.0/999/message_templates", headers=TOKEN), 400, 100)
    meta_error(
        await sim.client.get(f"/v25.0/{WABA}/message_templates?after=garbage", headers=TOKEN), 400, 100
    )


async def test_5xx_fault_answers_500_and_sends_nothing(sim: Sim) -> None:
    r = await sim.client.post("/sandbox/faults", json={"error_5xx_rate": 1.0})
    assert r.json()["error_5xx_rate"] == 1.0
    meta_error(await sim.send(template()), 500, 131000)
    stats = sim.state.stats()
    assert (stats["sends"], stats["accepted"], stats["faults"]) == (1, 0, {"5xx": 1})
    await sim.client.delete("/sandbox/faults")
    assert (await sim.send(template())).status_code == 200


async def test_dropped_answer_still_sent_the_message(sim: Sim) -> None:
    await sim.client.post("/sandbox/faults", json={"drop_answer_rate": 1.0})
    r = await sim.send(template())
    assert r.status_code == 502 and r.headers["content-type"].startswith("text/plain")  # no Meta error
    await sim.state.idle()
    assert sim.state.stats()["accepted"] == 1
    [sent] = (await sim.client.get("/sandbox/messages")).json()["data"]
    assert [s["status"] for s in sim.receiver.statuses()] == ["sent", "delivered", "read"]
    assert {s["id"] for s in sim.receiver.statuses()} == {sent["id"]}


async def test_timed_out_answer_comes_late_after_the_message_went_out(sim: Sim) -> None:
    await sim.client.post("/sandbox/faults", json={"timeout_rate": 1.0, "timeout_seconds": 0.3})
    started = time.monotonic()
    r = await sim.send(template())
    assert r.status_code == 200 and time.monotonic() - started >= 0.3
    assert [s["status"] for s in sim.receiver.statuses()] == [
        "sent",
        "delivered",
        "read",
    ]  # before the answer


async def test_faults_replay_with_a_seed_and_latency_delays(sim: Sim) -> None:
    async def outcomes() -> list[int]:
        await sim.client.post("/sandbox/faults", json={"error_5xx_rate": 0.5, "seed": 7, "latency_ms": 5})
        return [(await sim.send(template())).status_code for _ in range(12)]

    started = time.monotonic()
    first = await outcomes()
    assert time.monotonic() - started >= 12 * 0.005
    assert set(first) == {200, 500}
    assert await outcomes() == first


async def test_inbound_posts_a_signed_messages_webhook(sim: Sim) -> None:
    referral = {"source_type": "ad", "source_id": "120200000000000", "ctwa_clid": "ARAxyz"}
    r = await sim.inbound(text="hi!", name="Ana", user_id="BR.77", referral=referral)
    answer = r.json()
    assert answer["webhook"] == {"url": HOOK_URL, "status_code": 200, "delivered": True}
    assert sim.receiver.payloads == [answer["payload"]] and sim.receiver.bad_signatures == 0
    [value] = sim.receiver.values()
    assert value["contacts"] == [{"profile": {"name": "Ana"}, "wa_id": CUSTOMER_WA_ID, "user_id": "BR.77"}]
    [message] = value["messages"]
    assert message["from"] == CUSTOMER_WA_ID and message["from_user_id"] == "BR.77"
    assert message["type"] == "text" and message["text"] == {"body": "hi!"}
    assert message["referral"] == referral and message["id"].startswith("wamid.SANDBOX")
    assert abs(int(message["timestamp"]) - time.time()) < 5

    aged = (await sim.inbound(ago_seconds=3600)).json()["payload"]
    aged_ts = int(aged["entry"][0]["changes"][0]["value"]["messages"][0]["timestamp"])
    assert abs(aged_ts - (time.time() - 3600)) < 5


async def test_stats_count_every_send_attempt(sim: Sim) -> None:
    await sim.client.post(f"/v25.0/{PN}/messages", json=template())  # no token
    await sim.send(text(to="nope"))
    await sim.send(template())
    await sim.send(template(), pn="222")
    stats = (await sim.client.get("/sandbox/stats")).json()
    assert (stats["sends"], stats["accepted"]) == (4, 2)
    assert stats["by_phone_number"] == {PN: {"sends": 3, "accepted": 1}, "222": {"sends": 1, "accepted": 1}}
    assert stats["errors"] == {"100": 1, "190": 1}


async def test_webhook_refused_by_the_gate_is_retried_then_given_up(open_sim: OpenSim) -> None:
    calls = []

    def refuse(request: httpx.Request) -> httpx.Response:
        calls.append(request)
        return httpx.Response(503)

    sim = await open_sim(webhook_transport=httpx.MockTransport(refuse), webhook_retry_delays=(0.01, 0.01))
    answer = (await sim.inbound()).json()
    assert answer["webhook"] == {"url": HOOK_URL, "status_code": 503, "delivered": False}
    assert len(calls) == 3 and sim.state.stats()["webhooks"] == {"posted": 0, "failed": 1}


async def test_simulator_inbound_opens_the_gates_window(
    open_sim: OpenSim, client: httpx.AsyncClient, admin_headers: dict[str, str]
) -> None:
    """The whole loop on one machine: the simulator posts, signed, into the real gate app."""

    async def into_the_gate(request: httpx.Request) -> httpx.Response:
        headers = {k: request.headers[k] for k in ("content-type", "x-hub-signature-256")}
        answer = await client.post(request.url.path, content=request.content, headers=headers)
        return httpx.Response(answer.status_code, content=answer.content)

    sim = await open_sim(
        webhook_url="http://gate/webhooks/whatsapp", webhook_transport=httpx.MockTransport(into_the_gate)
    )
    r = await client.get(f"/v1/windows/{PN}/{CUSTOMER}", headers=admin_headers)
    assert r.json()["state"] == "never_opened"
    answer = (await sim.inbound(text="where is my order?")).json()
    assert answer["webhook"]["status_code"] == 200
    r = await client.get(f"/v1/windows/{PN}/{CUSTOMER}", headers=admin_headers)
    assert r.status_code == 200, r.text
    assert r.json()["state"] == "open" and r.json()["can_send_free_form"] is True
    await sim.send(text())  # its status webhooks are well signed and taken by the gate too
    await sim.state.idle()
    assert sim.state.stats()["webhooks"] == {"posted": 4, "failed": 0}


async def test_simulators_free_entry_point_reaches_the_gates_window(
    open_sim: OpenSim, client: httpx.AsyncClient, admin_headers: dict[str, str]
) -> None:
    async def into_the_gate(request: httpx.Request) -> httpx.Response:
        headers = {k: request.headers[k] for k in ("content-type", "x-hub-signature-256")}
        answer = await client.post(request.url.path, content=request.content, headers=headers)
        return httpx.Response(answer.status_code, content=answer.content)

    sim = await open_sim(
        webhook_url="http://gate/webhooks/whatsapp", webhook_transport=httpx.MockTransport(into_the_gate)
    )
    await sim.inbound(referral=REFERRAL)
    await sim.send(template("spring_sale", "en", "Ana"))
    await sim.state.idle()
    window = (await client.get(f"/v1/windows/{PN}/{CUSTOMER}", headers=admin_headers)).json()
    fep = window["free_entry_point"]
    assert fep["active"] is True
    ends = datetime.fromisoformat(fep["expires_at"]).timestamp()
    assert abs(ends - (sim.state.now() + timedelta(hours=72)).timestamp()) < 5


@pytest.mark.parametrize(
    ("flags", "kept_in"),
    [
        ([], "DATA_DIR/sandbox"),
        (["--data-dir", "TMP/elsewhere"], "TMP/elsewhere"),
        (["--data-dir", ""], None),
    ],
)
def test_simulator_verb_needs_no_database(
    monkeypatch: pytest.MonkeyPatch, data_dir: Path, tmp_path: Path, flags: list[str], kept_in: str | None
) -> None:
    import uvicorn

    def no_database(*_: object) -> str:
        raise AssertionError("the simulator must not resolve a database")

    served: dict[str, Any] = {}
    monkeypatch.setattr(db, "database_url", no_database)
    monkeypatch.setattr(uvicorn, "run", lambda app, **kw: served.update(app=app, **kw))
    flags = [f.replace("TMP", str(tmp_path)) for f in flags]
    cli.main(["simulator", "--port", "8123", "--throughput", "5", "--webhook-url", "", *flags])
    assert served["port"] == 8123
    config = simulator_state(served["app"]).config
    assert config.throughput_per_second == 5 and config.webhook_url is None
    expected = kept_in and Path(kept_in.replace("DATA_DIR", str(data_dir)).replace("TMP", str(tmp_path)))
    assert config.data_dir == expected  # where it keeps what Meta would not forget


def test_sandbox_inbound_helper_posts_to_the_simulator() -> None:
    seen: list[dict[str, Any]] = []

    def simulator(request: httpx.Request) -> httpx.Response:
        assert request.url.path == "/sandbox/inbound"
        seen.append(orjson.loads(request.content))
        return httpx.Response(200, json={"message_id": "wamid.SANDBOXx", "webhook": {}, "payload": {}})

    post_inbound("http://sim", PN, CUSTOMER, "hi", hours_ago=25, transport=httpx.MockTransport(simulator))
    assert seen == [{"phone_number_id": PN, "from": CUSTOMER, "text": "hi", "ago_seconds": 25 * 3600}]


async def test_idle_is_bounded(sim: Sim) -> None:
    sim.state.spawn(asyncio.sleep(10))
    with pytest.raises(TimeoutError):
        await sim.state.idle(0.05)


# --- what survives a restart (Meta does not forget) ---------------------------------------------------------
async def test_a_restarted_simulator_keeps_its_free_entry_points(open_sim: OpenSim, tmp_path: Path) -> None:
    sim = await open_sim(data_dir=tmp_path)
    await sim.inbound(referral=REFERRAL)
    await sim.send(template("spring_sale", "en", "Ana"))
    await sim.state.idle()
    [conversation] = {s["conversation"]["id"] for s in sim.receiver.statuses()}
    restarted = await open_sim(data_dir=tmp_path)  # no clean stop
    await restarted.send(template("spring_sale", "en", "Ana"))
    await restarted.state.idle()
    statuses = restarted.receiver.statuses()
    assert statuses[0]["pricing"] == FREE_ENTRY_POINT and statuses[0]["conversation"]["id"] == conversation


async def test_a_restarted_simulator_keeps_its_windows(open_sim: OpenSim, tmp_path: Path) -> None:
    bsuid = "US.13491208655302741918"
    sim = await open_sim(data_dir=tmp_path)
    await sim.inbound()
    await sim.inbound("+1 415 555 0100", user_id=bsuid)  # teaches BSUID → wa_id
    await sim.client.post("/sandbox/clock", json={"advance_seconds": 3600})
    # No clean stop: windows are saved the moment they change, as if the process were killed now.
    restarted = await open_sim(data_dir=tmp_path)
    assert abs(restarted.state.now() - sim.state.now()) < timedelta(seconds=1)  # the clock offset too
    assert restarted.state.window_open(PN, CUSTOMER_WA_ID, None)
    assert restarted.state.window_open(PN, None, bsuid)
    r = await restarted.send({k: v for k, v in text().items() if k != "to"} | {"recipient": bsuid})
    assert r.json()["contacts"] == [{"input": bsuid, "wa_id": "14155550100", "user_id": bsuid}]
    await restarted.send(text())
    await restarted.state.idle()
    assert sorted(s["status"] for s in restarted.receiver.statuses()) == sorted(
        ["sent", "delivered", "read"] * 2
    )
    assert not (await open_sim(data_dir=tmp_path / "elsewhere")).state.window_open(PN, CUSTOMER_WA_ID, None)


async def test_accepted_messages_are_saved_shortly_after_not_on_every_send(
    open_sim: OpenSim, tmp_path: Path
) -> None:
    sim = await open_sim(data_dir=tmp_path, save_delay=0.2)
    wamid = (await sim.send(template())).json()["messages"][0]["id"]
    assert (await open_sim(data_dir=tmp_path)).state.messages == deque()  # not yet
    await sim.state.idle()
    await asyncio.sleep(0.3)
    [saved] = (await open_sim(data_dir=tmp_path)).state.messages
    assert (
        saved == sim.state.messages[0]
        and saved.id == wamid
        and saved.statuses == ["sent", "delivered", "read"]
    )


async def test_a_clean_stop_saves_what_was_waiting(open_sim: OpenSim, tmp_path: Path) -> None:
    sim = await open_sim(data_dir=tmp_path, save_delay=3600)
    await sim.send(template())
    await sim.state.idle()
    await sim.state.aclose()
    restarted = await open_sim(data_dir=tmp_path)
    r = await restarted.client.get("/sandbox/messages")
    assert [m["template"] for m in r.json()["data"]] == ["hello_world"]
    assert r.json()["data"][0]["statuses"] == ["sent", "delivered", "read"]


async def test_reset_forgets_on_disk_too(open_sim: OpenSim, tmp_path: Path) -> None:
    sim = await open_sim(data_dir=tmp_path)
    await sim.inbound()
    await sim.send(text())
    await sim.client.post("/sandbox/reset")
    restarted = await open_sim(data_dir=tmp_path)
    assert not restarted.state.window_open(PN, CUSTOMER_WA_ID, None)
    assert not restarted.state.messages


@pytest.mark.parametrize("content", [b"{not json\n", b'{"format": 99}\n', b""])
async def test_a_journal_of_another_format_is_set_aside_not_misread(
    open_sim: OpenSim, tmp_path: Path, content: bytes
) -> None:
    (tmp_path / "simulator.jsonl").write_bytes(content)
    sim = await open_sim(data_dir=tmp_path)
    assert sim.state.last_inbound == {}
    assert (tmp_path / "simulator.jsonl.unreadable").read_bytes() == content
    await sim.inbound()
    assert (await open_sim(data_dir=tmp_path)).state.window_open(PN, CUSTOMER_WA_ID, None)


async def test_a_torn_or_unknown_line_is_skipped_and_the_rest_kept(open_sim: OpenSim, tmp_path: Path) -> None:
    sim = await open_sim(data_dir=tmp_path)
    await sim.inbound()
    with (tmp_path / "simulator.jsonl").open("ab") as journal:
        journal.write(
            b'{"inbound": 3}\n{"status": ["wamid.unknown", "read"]}\n{"inbound": ["1065'
        )  # killed mid-line
    restarted = await open_sim(data_dir=tmp_path)
    assert restarted.state.window_open(PN, CUSTOMER_WA_ID, None)
    await restarted.inbound("+1 415 555 0100")  # appended after the torn line, not glued to it
    again = await open_sim(data_dir=tmp_path)
    assert again.state.window_open(PN, CUSTOMER_WA_ID, None) and again.state.window_open(
        PN, "14155550100", None
    )


async def test_in_process_sandbox_keeps_its_state_in_data_dir(database_url: str, data_dir: Path) -> None:
    """The gate's own simulator (no transport given): closing the gate saves it in DATA_DIR/sandbox."""
    app = create_app(
        load_settings(database_url=database_url, sandbox=True, api_key_cache_seconds=0), in_process
    )
    async with LifespanManager(app) as manager:
        transport = httpx.ASGITransport(app=manager.app)
        async with httpx.AsyncClient(transport=transport, base_url="http://gate") as gate:
            key = await make_key(app.state.gate.engine, Role.SEND)
            body = {"phone_number_id": PN, "to": CUSTOMER} | {
                k: v for k, v in template().items() if k != "to"
            }
            r = await gate.post("/v1/messages", json=body, headers={"Authorization": f"Bearer {key}"})
            assert r.status_code == 201, r.text
    await empty(database_url)
    journal = [
        orjson.loads(line) for line in (data_dir / "sandbox" / "simulator.jsonl").read_bytes().splitlines()
    ]
    assert [j["message"]["id"] for j in journal if "message" in j] == [r.json()["graph_message_id"]]


async def test_the_journal_is_compacted_as_it_grows(
    open_sim: OpenSim, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(sandbox_state, "COMPACT_MIN_LINES", 10)
    sim = await open_sim(data_dir=tmp_path)
    for _ in range(40):  # one customer writing again and again: one window, many lines
        await sim.inbound()
    assert len((tmp_path / "simulator.jsonl").read_bytes().splitlines()) <= 1 + 10 + 4 * 2
    assert (await open_sim(data_dir=tmp_path)).state.window_open(PN, CUSTOMER_WA_ID, None)


@pytest.mark.parametrize("code", [131049, 131026, 131056, 130472])
async def test_injected_meta_error_is_answered_at_once_in_metas_shape(sim: Sim, code: int) -> None:
    r = await sim.client.post("/sandbox/faults", json={"errors": [{"code": code, "rate": 1}]})
    assert r.json()["errors"] == [{"code": code, "rate": 1, "in_status": False}]
    error = meta_error(await sim.send(template()), 400, code)
    assert error["error_data"]["details"]
    stats = sim.state.stats()
    assert (stats["accepted"], stats["errors"], stats["faults"]) == (0, {str(code): 1}, {str(code): 1})
    await sim.client.delete("/sandbox/faults")
    assert (await sim.send(template())).status_code == 200


async def test_injected_meta_error_in_status_accepts_then_fails_with_href(sim: Sim) -> None:
    faults = {"errors": [{"code": 131049, "rate": 1, "in_status": True}]}
    assert (await sim.client.post("/sandbox/faults", json=faults)).status_code == 200
    r = await sim.send(template("spring_sale", "en", "Ana"))
    assert r.status_code == 200 and r.json()["messages"][0]["id"].startswith("wamid.SANDBOX")
    await sim.state.idle()
    [failed] = sim.receiver.statuses()
    [error] = failed["errors"]
    assert failed["status"] == "failed" and error["code"] == 131049
    assert error["href"] == "https://developers.facebook.com/docs/whatsapp/cloud-api/support/error-codes/"
    assert error["title"] and error["error_data"]["details"]


async def test_an_error_fault_the_simulator_does_not_know_is_refused(sim: Sim) -> None:
    r = await sim.client.post("/sandbox/faults", json={"errors": [{"code": 999999, "rate": 1}]})
    assert r.status_code == 422
    assert (await sim.send(template())).status_code == 200


# --- mark as read, media, other objects --------------------------------------------------------------------
READ_MARK = {
    "messaging_product": "whatsapp",
    "status": "read",
    "message_id": "wamid.HBgNNTUxMTk4NzY1NDMyMRUC",
}


async def test_mark_as_read_answers_success_and_sends_nothing(sim: Sim) -> None:
    for body in (READ_MARK, {**READ_MARK, "typing_indicator": {"type": "text"}}):
        r = await sim.send(body)
        assert (r.status_code, r.json()) == (200, {"success": True}), r.text
    await sim.state.idle()
    stats = sim.state.stats()
    assert (stats["marked_read"], stats["sends"], stats["accepted"]) == (2, 0, 0)
    assert sim.receiver.payloads == []  # no status webhook: nothing was sent


@pytest.mark.parametrize(
    ("body", "mentions"),
    [
        ({"messaging_product": "whatsapp", "status": "read"}, "message_id"),
        ({**READ_MARK, "status": "delivered"}, "status"),
        ({**READ_MARK, "typing_indicator": {"type": "audio"}}, "typing_indicator"),
        ({**READ_MARK, "to": CUSTOMER}, "recipient"),
    ],
)
async def test_a_bad_status_update_is_metas_code_100(sim: Sim, body: dict[str, Any], mentions: str) -> None:
    error = meta_error(await sim.send(body), 400, 100)
    assert mentions in error["error_data"]["details"]
    meta_error(await sim.client.post(f"/v25.0/{PN}/messages", json=READ_MARK), 401, 190)


async def test_media_is_uploaded_looked_up_downloaded_and_deleted(sim: Sim) -> None:
    data = b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 8 + b"\r\n"
    files = {"file": ("logo.png", data, "image/png")}
    r = await sim.client.post(
        f"/v25.0/{PN}/media", files=files, data={"messaging_product": "whatsapp"}, headers=TOKEN
    )
    assert r.status_code == 200, r.text
    media_id = r.json()["id"]
    assert media_id.isdigit()
    info = (await sim.client.get(f"/v25.0/{media_id}?phone_number_id={PN}", headers=TOKEN)).json()
    assert (info["mime_type"], info["file_size"], info["id"]) == ("image/png", len(data), media_id)
    assert info["url"].startswith("http://sim/whatsapp_business/attachments/?mid=")
    meta_error(await sim.client.get(info["url"]), 401, 190)  # the CDN wants the token too
    got = await sim.client.get(info["url"], headers=TOKEN)
    assert got.content == data and got.headers["content-type"] == "image/png"
    meta_error(await sim.client.get(f"/v25.0/{media_id}?phone_number_id=1", headers=TOKEN), 400, 100)
    meta_error(await sim.client.delete(f"/v25.0/{media_id}?phone_number_id=1", headers=TOKEN), 400, 100)
    assert (await sim.client.delete(f"/v25.0/{media_id}", headers=TOKEN)).json() == {"success": True}
    meta_error(await sim.client.get(info["url"], headers=TOKEN), 400, 100)
    meta_error(await sim.client.post(f"/v25.0/{PN}/media", content=b"raw", headers=TOKEN), 400, 100)


async def test_the_number_the_account_and_what_it_does_not_model(sim: Sim) -> None:
    number = (await sim.client.get(f"/v25.0/{PN}", headers=TOKEN)).json()
    assert number["id"] == PN and number["display_phone_number"]
    assert (await sim.client.get(f"/v25.0/{WABA}", headers=TOKEN)).json()["id"] == WABA
    for method, path in (
        ("POST", f"/v25.0/{PN}"),
        ("GET", f"/v25.0/{PN}/qr"),
        ("DELETE", f"/v25.0/{PN}/x/y"),
    ):
        meta_error(await sim.client.request(method, path, headers=TOKEN), 400, 100)
    assert (await sim.client.get("/sandbox/stats")).status_code == 200  # controls are not shadowed


async def test_paging_links_carry_the_token_as_metas_do(sim: Sim) -> None:
    page = (await sim.client.get(f"/v25.0/{WABA}/message_templates?limit=2", headers=TOKEN)).json()
    assert "access_token=any-token" in page["paging"]["next"]
