"""Gated sending: decide on the window, record, proxy to Meta, record Meta's answer.

A send is written (status `pending`) before it leaves, so a crash can never lose or double it: a record
left `pending` by a dead process becomes `unknown` and is never re-sent blindly.
"""

import asyncio
import functools
import hashlib
import logging
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import orjson

from window_gate.apikey.rules import Caller, Role
from window_gate.consent import service as consent
from window_gate.customer import service as customers
from window_gate.customer.identity import parse_customer
from window_gate.errors import (
    GateError,
    IdempotencyConflict,
    UpstreamError,
    UpstreamTimeout,
    ValidationFailed,
    WindowClosed,
    replay,
)
from window_gate.graph import client as graph
from window_gate.graph.reactions import RE_ENGAGEMENT, gate_error
from window_gate.kit import Gate
from window_gate.message import repository
from window_gate.message.schemas import RecipientOut, SendOut
from window_gate.pricing import service as pricing
from window_gate.pricing.rules import Tables
from window_gate.template import service as templates
from window_gate.template.service import TemplateInfo
from window_gate.window import repository as windows
from window_gate.window import service as window_service
from window_gate.window.rule import Policy
from window_gate.window.schemas import WindowOut

TEMPLATE = "template"
MARKETING = "MARKETING"
DELIVERED = {"sent", "delivered", "read"}
UNKNOWN = "unknown"  # the request may have reached Meta: never re-sent  # statuses only Meta's webhooks set
OPAQUE_PREFIX = "wg:"  # biz_opaque_callback_data = "wg:<message id>": status webhooks find the record
log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Sent:
    out: SendOut
    meta: dict[str, Any]  # Meta's own answer, for the Graph-compatible pass-through


async def send(gate: Gate, caller: Caller, body: dict[str, Any], idempotency_key: str | None) -> Sent:
    phone_number_id = str(body.pop("phone_number_id"))
    caller.require(Role.SEND, phone_number_id)
    kind = str(body.get("type") or "text")
    if body.get("to") is not None and body.get("recipient") is not None:
        # Meta would get both, and the gate checks one window: which customer it reaches is not ours to guess.
        raise ValidationFailed("give `to` (phone number) or `recipient` (BSUID), not both")
    to = body.get("to") or body.get("recipient")
    if not isinstance(to, str) or not to:
        raise ValidationFailed("`to` (phone number) or `recipient` (BSUID) is required")
    if (kind not in body and kind != TEMPLATE) or (
        kind == TEMPLATE and not isinstance(body.get(TEMPLATE), dict)
    ):
        raise ValidationFailed(f"a message of type {kind!r} needs a {kind!r} object")
    ref = parse_customer(to)
    request_hash = hashlib.sha256(
        orjson.dumps([phone_number_id, body], option=orjson.OPT_SORT_KEYS)
    ).hexdigest()
    if idempotency_key:
        previous = await _previous(gate, caller, idempotency_key, request_hash)
        if previous is not None:
            return previous

    now = window_service.now()
    template: TemplateInfo | None = None
    [window] = await window_service.check(gate.hot, phone_number_id, [ref], gate.part(Policy), now)
    if kind == TEMPLATE:
        async with gate.engine.connect() as conn:
            template = await templates.check_send(conn, phone_number_id, body[TEMPLATE])
            if template.category == MARKETING:
                await consent.check_marketing(conn, phone_number_id, ref.aliases())
    if kind != TEMPLATE and not window.can_send_free_form:
        raise WindowClosed(
            f"free-form messages need an open window; it is {window.state.value}: send an approved template",
            window=window.model_dump(mode="json"),
            hint="send a template message (type `template`); only the customer's reply reopens the window",
        )

    message_id = uuid.uuid4()
    caller_opaque = body.get("biz_opaque_callback_data")
    outbound = {**body, "biz_opaque_callback_data": f"{OPAQUE_PREFIX}{message_id}"}
    # An unknown template category is priced as the dearest (marketing), so budgets err on the safe side.
    category = (template.category or MARKETING) if template else None
    record = functools.partial(
        repository.insert_pending,
        id=message_id,
        api_key_id=caller.id,
        idempotency_key=idempotency_key,
        request_hash=request_hash,
        phone_number_id=phone_number_id,
        recipient_input=to,
        type=kind,
        body={**body, "biz_opaque_callback_data": caller_opaque} if caller_opaque else body,
        window=window.model_dump(mode="json"),
        at=now,
    )
    estimate = await pricing.estimate_send(
        gate.autocommit,
        gate.part(Tables),
        phone_number_id=phone_number_id,
        category=category,
        recipient=window.customer.wa_id or window.customer.user_id or to,
        window=window,
        at=now,
    )
    # A free send is one statement on the hot pool (autocommit); a paid one reserves its budget in the
    # same transaction, so a budget refusal leaves nothing recorded and nothing sent.
    if not estimate.amount:
        recorded = await record(gate.hot, estimate=pricing.estimate_columns(estimate))
    else:
        async with gate.engine.begin() as conn:
            recorded = await record(conn, estimate=pricing.estimate_columns(estimate))
            if recorded:
                await pricing.reserve(
                    conn,
                    phone_number_id=phone_number_id,
                    api_key_id=caller.id,
                    amount=estimate.amount,
                    currency=estimate.currency,
                    at=now,
                )
    if not recorded:  # a concurrent request with the same key won the race: answer as it does
        assert idempotency_key is not None
        previous = await _previous(gate, caller, idempotency_key, request_hash)
        assert previous is not None
        return previous

    async def settle(
        status: str, err: GateError, error: object, refusal: graph.GraphError | None = None
    ) -> GateError:
        """Meta refused the send, or was silent: the record's final word, in one transaction. A send that
        surely did not leave gives its budget back; Meta's verdicts on the window and template are kept."""
        err.context["id"] = str(message_id)
        at = window_service.now()
        problem = err.problem()

        async def write() -> None:
            async with gate.engine.begin() as conn:
                finished = await repository.finish(
                    conn,
                    message_id,
                    status=status,
                    at=at,
                    error=error,
                    response_status=err.status,
                    response=problem,
                )
                if not finished:  # an earlier try committed unseen: the rest is done too
                    return
                if status != UNKNOWN:
                    await pricing.release(
                        conn,
                        phone_number_id=phone_number_id,
                        api_key_id=caller.id,
                        amount=estimate.amount,
                        at=now,
                    )
                if refusal is not None and refusal.code == RE_ENGAGEMENT:  # Meta's word beats ours
                    customer_id = await customers.link(
                        conn,
                        window.customer.wa_id,
                        window.customer.user_id,
                        "send",
                        also_move=windows.move_windows,
                    )
                    await windows.record_verdicts(
                        conn, [windows.Verdict(phone_number_id, customer_id, at, None)]
                    )
                if refusal is not None and refusal.code and kind == TEMPLATE:
                    await templates.learn_from_meta_error(conn, phone_number_id, body[TEMPLATE], refusal.code)

        await _final_word(gate, message_id, write, OUTCOMES[status].format(code=err.code))
        return err

    try:
        answer = await gate.graph.send_message(phone_number_id, outbound, recorded.access_token)
    except graph.GraphError as exc:
        raise await settle("failed", gate_error(exc), exc.raw or None, exc) from None
    except graph.UpstreamTimeout as exc:
        reason = f"no answer from Meta ({exc}); the message may have left: it is not re-sent"
        raise await settle(UNKNOWN, UpstreamTimeout(reason), {"reason": str(exc)}) from None
    except graph.UpstreamUnreachable as exc:
        reason = f"Meta could not be reached ({exc}); nothing was sent"
        raise await settle("not_sent", UpstreamError(reason), {"reason": str(exc)}) from None

    contact = (answer.get("contacts") or [{}])[0]
    wamid = str((answer.get("messages") or [{}])[0].get("id") or "") or None
    wa_id = contact.get("wa_id")
    out = SendOut(
        id=message_id,
        graph_message_id=wamid,
        status="accepted",
        recipient=RecipientOut(input=to, wa_id=wa_id),
        window=window,
        pricing_estimate=pricing.estimate_out(estimate),
    )
    response = {**out.model_dump(mode="json"), "meta": answer}
    at = window_service.now()

    async def accepted() -> None:
        await repository.finish(
            gate.hot,
            message_id,
            status="accepted",
            at=at,
            graph_message_id=wamid,
            wa_id=wa_id,
            response_status=201,
            response=response,
        )

    await _final_word(gate, message_id, accepted, f"Meta accepted it as {wamid}", graph_message_id=wamid)
    if wa_id and ref.wa_id and wa_id != ref.wa_id:
        # Meta told us how this spelling maps to the account (BR ninth digit, MX 521, …): remember it. Only
        # a shortcut for later lookups: the send is recorded, so its failure does not change the answer.
        try:
            async with gate.engine.begin() as conn:
                await customers.link(
                    conn, wa_id, None, "send", aliases=[ref.wa_id], also_move=windows.move_windows
                )
        except Exception:
            log.warning("alias %s → %s not learnt", ref.wa_id, wa_id, exc_info=True)
    return Sent(out, answer)


# What the gate knows of a send whose outcome it could not record, by the status it meant to record.
OUTCOMES = {
    "failed": "Meta refused it ({code})",
    UNKNOWN: "Meta did not answer",
    "not_sent": "Meta could not be reached",
}
# Past Meta's timeout, a request still `pending` is not waiting for Meta any more: its process died, or the
# database failed as it wrote the outcome.
IN_FLIGHT_SLACK_SECONDS = 5
FINAL_WORD_RETRIES = (0.2, 0.5, 1, 2, 5, 10, 30, 60, 60, 60, 60, 60)  # about 6 minutes


async def _final_word(
    gate: Gate,
    message_id: uuid.UUID,
    write: Callable[[], Awaitable[None]],
    outcome: str,
    graph_message_id: str | None = None,
) -> None:
    """Record the outcome of a request that has left for Meta. If the database fails now, "nothing was
    decided" (503) would be false and invite a second send: the answer is 504, outcome unknown, with the
    gate's id; the write is retried in the background, so a retry with the same Idempotency-Key soon finds
    the real outcome (a process that dies first leaves the record `pending`, later `unknown`, and Meta's
    status webhooks still find it by its id)."""
    try:
        await write()
    except Exception as exc:
        log.warning("send %s: outcome not recorded (%r); retrying in the background", message_id, exc)
        task = asyncio.create_task(_retry(write, message_id))
        gate.background.add(task)
        task.add_done_callback(gate.background.discard)
        raise UpstreamTimeout(
            f"the message left for Meta ({outcome}) but the gate could not record the outcome: it is unknown "
            f"for now and is not re-sent; GET /v1/messages/{message_id} (or a retry with the same "
            "Idempotency-Key) shows it once recorded",
            id=str(message_id),
            message_status=UNKNOWN,  # `status` is the HTTP status in a problem
            **({"graph_message_id": graph_message_id} if graph_message_id else {}),
        ) from None


async def _retry(write: Callable[[], Awaitable[None]], message_id: uuid.UUID) -> None:
    for delay in FINAL_WORD_RETRIES:
        await asyncio.sleep(delay)
        try:
            await write()
        except Exception as exc:
            log.debug("send %s: outcome still not recorded (%r)", message_id, exc)
        else:
            log.info("send %s: outcome recorded after all", message_id)
            return
    log.warning("send %s: outcome never recorded; it stays pending, then unknown", message_id)


async def _previous(gate: Gate, caller: Caller, key: str, request_hash: str) -> Sent | None:
    """The first answer given for this Idempotency-Key, waiting while that request may still be in flight:
    a record `pending` for longer than Meta's timeout (and a little) is answered as unknown at once."""
    in_flight = gate.settings.graph_timeout_seconds + IN_FLIGHT_SLACK_SECONDS
    while True:
        async with gate.autocommit.connect() as conn:
            previous = await repository.by_idempotency_key(conn, caller.id, key)
        if previous is None:
            return None
        if previous.request_hash != request_hash:
            raise IdempotencyConflict(
                "this Idempotency-Key was used with a different body", id=str(previous.id)
            )
        if previous.response is not None and previous.response_status is not None:
            if previous.response_status >= 400:
                raise replay(previous.response)
            stored = dict(previous.response)
            meta = stored.pop("meta", {})
            return Sent(SendOut.model_validate(stored), meta)
        if previous.status in DELIVERED and previous.window is not None:
            # Meta's answer was lost (the process died) but its status webhooks told us the message left.
            out = SendOut(
                id=previous.id,
                graph_message_id=previous.graph_message_id,
                status=previous.status,
                recipient=RecipientOut(input=previous.recipient_input, wa_id=previous.recipient_wa_id),
                window=WindowOut.model_validate(previous.window),
            )
            meta = {
                "messaging_product": "whatsapp",
                "contacts": [{"input": previous.recipient_input, "wa_id": previous.recipient_wa_id}],
                "messages": [{"id": previous.graph_message_id}],
            }
            return Sent(out, meta)
        if previous.status != "pending" or previous.age > in_flight:
            raise UpstreamTimeout(
                "the first request with this Idempotency-Key has no known outcome; it is not re-sent",
                id=str(previous.id),
                message_status=UNKNOWN,  # `status` is the HTTP status in a problem
                **({"graph_message_id": previous.graph_message_id} if previous.graph_message_id else {}),
            )
        await asyncio.sleep(0.05)
