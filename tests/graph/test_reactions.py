"""Meta's error table (graph/reactions.py), row by row, through a real send: the gate's code as
problem+json, and through the Graph pass-through Meta's own error passed on."""

import json
from typing import Any

import httpx
import pytest

from tests.conftest import assert_problem
from tests.factories import PN
from tests.upstream import WA, Gated, Meta, meta_error, template_message
from window_gate.errors import replay
from window_gate.graph.client import regain_seconds
from window_gate.message.endpoints import as_meta_error

GRAPH_BODY = {
    "messaging_product": "whatsapp",
    "to": WA,
    "type": "template",
    "template": {"name": "hello_world", "language": {"code": "en_US"}},
}

# Meta's code → (the gate's code, HTTP status, Retry-After or None, the pass-through's HTTP status: Meta's own)
ROWS = {
    131049: ("marketing_limited", 429, "86400", 400),
    130472: ("marketing_limited", 429, "86400", 400),
    131026: ("undeliverable", 422, None, 400),
    131048: ("rate_limited", 429, "3600", 400),
    131064: ("rate_limited", 429, "3600", 400),
    4: ("rate_limited", 429, "60", 400),
    80007: ("rate_limited", 429, "60", 400),
    132005: ("template_parameters_invalid", 422, None, 400),
    132007: ("template_parameters_invalid", 422, None, 400),
    132018: ("template_parameters_invalid", 422, None, 400),
    132068: ("template_not_approved", 422, None, 400),
    132069: ("template_not_approved", 422, "3600", 400),
    131062: ("invalid_recipient", 422, None, 400),
    131063: ("upstream_configuration", 502, None, 400),
    190: ("upstream_configuration", 502, None, 401),
    368: ("upstream_configuration", 502, None, 400),
    131005: ("upstream_configuration", 502, None, 400),
    131031: ("upstream_configuration", 502, None, 400),
    133010: ("upstream_configuration", 502, None, 400),
}


@pytest.mark.parametrize(("code", "expected"), ROWS.items(), ids=[str(c) for c in ROWS])
async def test_each_meta_error_has_its_reaction(
    gate: Gated, meta: Meta, code: int, expected: tuple[str, int, str | None, int]
) -> None:
    client, _ = gate
    gate_code, status, retry_after, graph_status = expected
    meta.reply = meta_error(code, "from Meta", http_status=401 if code == 190 else 400)
    r = await client.post("/v1/messages", json=template_message())
    problem: dict[str, Any] = assert_problem(r, status, gate_code)
    assert problem["meta_error"]["error"]["code"] == code  # Meta's own words, passed on whole
    assert r.headers.get("retry-after") == retry_after
    assert problem.get("retry_after") == (int(retry_after) if retry_after else None)
    assert (await client.get(f"/v1/messages/{problem['id']}")).json()["status"] == "failed"

    passed = await client.post(f"/graph/v25.0/{PN}/messages", json=GRAPH_BODY)
    assert passed.status_code == graph_status
    assert passed.json()["error"] == {
        "message": f"(#{code}) from Meta",
        "type": "OAuthException",
        "code": code,
        "fbtrace_id": "X",
    }
    assert passed.headers.get("retry-after") == retry_after


async def test_marketing_limit_names_the_customer_and_when_to_try_again(gate: Gated, meta: Meta) -> None:
    client, _ = gate
    meta.reply = meta_error(131049, "This message was not delivered to maintain healthy ecosystem engagement")
    r = await client.post("/v1/messages", json=template_message())
    problem: dict[str, Any] = assert_problem(r, 429, "marketing_limited")
    assert problem["customer"] == {"input": "+55 11 98765-4321", "wa_id": "5511987654321", "user_id": None}
    assert problem["retry_after"] == 86_400 and problem["retry_not_before"]
    assert problem["detail"].endswith("do not send marketing messages to this customer for 24 h")


async def test_throttled_app_waits_as_long_as_meta_says(gate: Gated, meta: Meta) -> None:
    client, _ = gate
    usage = {
        "102290129340398": [{"type": "whatsapp_business_messaging", "estimated_time_to_regain_access": 7}]
    }

    def throttled(_: httpx.Request) -> httpx.Response:
        error = {"message": "(#80007) Rate limit issues", "type": "OAuthException", "code": 80007}
        return httpx.Response(
            400, json={"error": error}, headers={"X-Business-Use-Case-Usage": json.dumps(usage)}
        )

    meta.reply = throttled
    r = await client.post("/v1/messages", json=template_message())
    assert_problem(r, 429, "rate_limited")
    assert r.headers["retry-after"] == "420"


@pytest.mark.parametrize(
    ("header", "seconds"),
    [
        (None, None),
        ("not json", None),
        ('{"1": [{"estimated_time_to_regain_access": 0}]}', None),
        ('{"1": [{"estimated_time_to_regain_access": 2}, {"estimated_time_to_regain_access": 5}]}', 300),
        ('{"1": [{"estimated_time_to_regain_access": true}], "2": "x", "3": [1]}', None),
    ],
)
def test_metas_usage_header_read_as_seconds(header: str | None, seconds: int | None) -> None:
    assert regain_seconds(header) == seconds


@pytest.mark.parametrize(
    ("gate_code", "meta_code"),
    [("marketing_limited", 131049), ("undeliverable", 131026), ("upstream_configuration", 131005)],
)
def test_the_gates_own_refusal_of_a_new_code_has_metas_shape(gate_code: str, meta_code: int) -> None:
    err = replay({"code": gate_code, "detail": "no Meta error kept", "retry_after": 5})
    answer = as_meta_error(err)
    body = json.loads(bytes(answer.body))
    assert body["error"]["code"] == meta_code and body["error"]["window_gate"] == {"code": gate_code}
    assert answer.status_code == 400
