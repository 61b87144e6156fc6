"""Meta's webhook endpoint: the verification handshake and signed deliveries."""

from datetime import UTC, datetime
from typing import Annotated

import structlog
from fastapi import APIRouter, Query, Request
from fastapi.responses import PlainTextResponse, Response

from window_gate.errors import DatabaseUnavailable, GateError, PayloadTooLarge, Unauthorized, problems
from window_gate.kit import gate
from window_gate.webhook import service
from window_gate.webhook.signature import verify

log = structlog.stdlib.get_logger(__name__)

router = APIRouter(prefix="/webhooks", tags=["webhooks"])


def _delivery(field_value: dict[str, object]) -> dict[str, object]:
    """A delivery as Meta posts it: one change of the account's `messages` field."""
    metadata = {"display_phone_number": "15550001111", "phone_number_id": "106540352242922"}
    value = {"messaging_product": "whatsapp", "metadata": metadata, **field_value}
    return {
        "object": "whatsapp_business_account",
        "entry": [{"id": "102290129340398", "changes": [{"value": value, "field": "messages"}]}],
    }


# In the shape of Meta's own samples: a customer's message (it opens the window), a send's status.
DELIVERY_EXAMPLES = {
    "message": {
        "summary": "A customer wrote: the window opens",
        "value": _delivery(
            {
                "contacts": [{"profile": {"name": "Ana Souza"}, "wa_id": "5511987654321"}],
                "messages": [
                    {
                        "from": "5511987654321",
                        "id": "wamid.HBgNNTUxMTk4NzY1NDMyMRUCABIYFDNBMDJBRjYyMkQ3QkQ4OEEzNDU3AA==",
                        "timestamp": "1764667800",
                        "type": "text",
                        "text": {"body": "Hi, where is my order?"},
                    }
                ],
            }
        ),
    },
    "status": {
        "summary": "Meta delivered a send",
        "value": _delivery(
            {
                "statuses": [
                    {
                        "id": "wamid.HBgNNTUxMTk4NzY1NDMyMRUCABEYEjQ4QzVGQkQ3RjU5RjNBRDZGOAA=",
                        "status": "delivered",
                        "timestamp": "1764667802",
                        "recipient_id": "5511987654321",
                        "biz_opaque_callback_data": "wg:5b2e8f0c-3d1a-4c6b-9e7f-2a4d6c8e0b13",
                        "pricing": {
                            "billable": False,
                            "pricing_model": "PMP",
                            "category": "service",
                            "type": "free_customer_service",
                        },
                    }
                ],
            }
        ),
    },
}


class VerificationFailed(GateError):
    code, status, title = "verification_failed", 403, "Webhook verification failed"
    sample = ("hub.mode must be subscribe and hub.verify_token must match", {})


BAD_SIGNATURE = "bad or missing X-Hub-Signature-256"
MEANING: dict[int | str, str] = {
    401: "X-Hub-Signature-256 missing or wrong: nothing written",
    413: "over WINDOW_GATE_MAX_BODY_BYTES (3 MB)",
    503: "Meta will retry",
}
RECEIVE_REFUSALS = {
    status: refusal | {"description": f"{refusal['description']}; {MEANING[status]}"}
    for status, refusal in problems(Unauthorized(BAD_SIGNATURE), PayloadTooLarge, DatabaseUnavailable).items()
}


@router.get(
    "/whatsapp",
    summary="Meta's webhook verification handshake",
    response_class=PlainTextResponse,
    responses={200: {"content": {"text/plain": {"example": "1158201444"}}}, **problems(VerificationFailed)},
)
async def verify_subscription(
    request: Request,
    mode: Annotated[str, Query(alias="hub.mode", examples=["subscribe"])] = "",
    verify_token: Annotated[str, Query(alias="hub.verify_token")] = "",
    challenge: Annotated[str, Query(alias="hub.challenge", max_length=256)] = "",
) -> PlainTextResponse:
    """Answers Meta's `GET ?hub.mode=subscribe&hub.verify_token=…&hub.challenge=…` with the challenge
    when the token is WINDOW_GATE_VERIFY_TOKEN; 403 otherwise."""
    expected = gate(request).settings.effective_verify_token
    if mode != "subscribe" or not expected or verify_token != expected:
        raise VerificationFailed("hub.mode must be subscribe and hub.verify_token must match")
    return PlainTextResponse(challenge)


@router.post(
    "/whatsapp",
    summary="Receive Meta's webhook deliveries",
    status_code=200,
    response_class=Response,
    responses={200: {"description": "Stored (and applied where understood)"}, **RECEIVE_REFUSALS},
    # Read by the endpoint itself (the hot path skips FastAPI's parameter solving): documented here.
    openapi_extra={
        "parameters": [
            {
                "name": "x-hub-signature-256",
                "in": "header",
                "required": True,
                "description": "sha256=<hex HMAC-SHA256 of the raw body with the app secret>",
                "schema": {"type": "string"},
            }
        ],
        "requestBody": {
            "required": True,
            "content": {"application/json": {"schema": {"type": "object"}, "examples": DELIVERY_EXAMPLES}},
        },
    },
)
async def receive(request: Request) -> Response:
    """Checks the signature over the raw bytes before anything is parsed or written, then stores the
    delivery and applies it: customer messages open windows, 131047 failures close them. A well-signed
    delivery always gets 200, even when parts of it are ignored, so Meta does not retry it for days."""
    state = gate(request)
    body = await request.body()
    if not verify(signature := request.headers.get("x-hub-signature-256"), body, state.settings.app_secrets):
        # Every one is an operator's question: a wrong WINDOW_GATE_APP_SECRET, or someone else posting.
        log.warning("webhook signature refused", signature_sent=signature is not None, body_bytes=len(body))
        raise Unauthorized(BAD_SIGNATURE)
    received_at = datetime.now(UTC)
    service.count(await service.ingest(state, body, received_at), received_at)
    return Response(status_code=200)
