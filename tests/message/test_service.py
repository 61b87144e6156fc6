"""The send path's phases, one at a time where they are pure, and through the API where they are not."""

import httpx
import pytest

from tests.upstream import Gated, Meta, template_message
from window_gate.errors import (
    GraphError,
    GraphFailure,
    GraphNoAnswer,
    GraphUnreachable,
    GraphUnreadable,
)
from window_gate.message.service import verdict
from window_gate.message.status import MessageStatus


@pytest.mark.parametrize(
    ("failure", "status", "code", "http"),
    [
        (GraphError(400, 131047, "Re-engagement message"), MessageStatus.FAILED, "window_closed", 409),
        (GraphError(500, 1, "An unknown error occurred"), MessageStatus.FAILED, "upstream_error", 502),
        (GraphUnreachable("connection refused"), MessageStatus.NOT_SENT, "upstream_error", 502),
        (GraphNoAnswer("ReadTimeout"), MessageStatus.UNKNOWN, "upstream_timeout", 504),
        (GraphUnreadable("not JSON"), MessageStatus.UNKNOWN, "upstream_timeout", 504),
    ],
)
def test_each_failure_of_meta_is_recorded_and_answered_for_what_it_says(
    failure: GraphFailure, status: MessageStatus, code: str, http: int
) -> None:
    recorded, err, _ = verdict(failure)
    assert (recorded, err.code, err.status) == (status, code, http)


async def test_an_unreadable_answer_from_meta_is_unknown_and_never_resent(gate: Gated, meta: Meta) -> None:
    """Meta answered 200, so the message probably left: the gate cannot say "not sent"."""
    client, _ = gate
    meta.reply = lambda _: httpx.Response(200, text="<html>maintenance</html>")
    key = {"Idempotency-Key": "html"}
    first = await client.post("/v1/messages", json=template_message(), headers=key)
    assert first.status_code == 504 and first.json()["code"] == "upstream_timeout"
    again = await client.post("/v1/messages", json=template_message(), headers=key)
    assert again.status_code == 504 and again.json() == first.json() and len(meta.requests) == 1
    record = (await client.get(f"/v1/messages/{first.json()['id']}")).json()
    assert record["status"] == MessageStatus.UNKNOWN
    assert [e["status"] for e in record["history"]] == ["pending", "unknown"]
