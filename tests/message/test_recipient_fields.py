"""`to` or `recipient`, never both: the gate checks one customer's window, and Meta would get both."""

from tests.conftest import assert_problem
from tests.factories import PN
from tests.upstream import WA, Gated, Meta, count, open_window, text_message

BSUID = "US.13491208655302741918"


async def test_send_with_both_to_and_recipient_is_refused_and_nothing_leaves(gate: Gated, meta: Meta) -> None:
    client, engine = gate
    await open_window(client)  # the window of `to` is open: only the ambiguity refuses it
    r = await client.post("/v1/messages", json=text_message(recipient=BSUID))
    problem = assert_problem(r, 422, "validation_error")
    assert "not both" in str(problem["detail"])
    assert meta.requests == [] and await count(engine, "messages") == 0


async def test_graph_pass_through_with_both_to_and_recipient_is_refused_in_metas_shape(
    gate: Gated, meta: Meta
) -> None:
    client, _ = gate
    await open_window(client)
    body = {
        "messaging_product": "whatsapp",
        "to": WA,
        "recipient": BSUID,
        "type": "text",
        "text": {"body": "hi"},
    }
    r = await client.post(f"/graph/v25.0/{PN}/messages", json=body)
    assert r.status_code == 400, r.text
    error = r.json()["error"]
    assert error["code"] == 100 and error["window_gate"]["code"] == "validation_error"
    assert meta.requests == []
