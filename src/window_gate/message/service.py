"""Gated sending in four phases: decide on the window, record, call Meta, settle Meta's answer.

A send is written (status `pending`) before it leaves, so a crash can never lose or double it: a record
left `pending` by a dead process becomes `unknown` and is never re-sent blindly. Each phase reads what
the earlier ones settled (`Request` → `Decision` → `Attempt`) and nothing else.
"""

import asyncio
import hashlib
import logging
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any

import orjson
import uuid_utils.compat as uuid_utils
from sqlalchemy.ext.asyncio import AsyncConnection

from window_gate import metrics
from window_gate.apikey.rules import Caller, Role
from window_gate.consent import service as consent
from window_gate.crypto import Sealer
from window_gate.customer import service as customers
from window_gate.customer.identity import CustomerRef, parse_customer
from window_gate.db import Rows
from window_gate.errors import (
    GateError,
    GraphError,
    GraphFailure,
    GraphUnreachable,
    IdempotencyConflict,
    MarketingLimited,
    UpstreamError,
    UpstreamTimeout,
    ValidationFailed,
    WindowClosed,
    replay,
)
from window_gate.graph.reactions import MARKETING_HOLDS, RE_ENGAGEMENT, gate_error
from window_gate.kit import Gate
from window_gate.message import repository
from window_gate.message.schemas import HeldOut, RecipientOut, SendOut
from window_gate.message.status import ANSWERED, LEFT, MessageStatus
from window_gate.pricing import service as pricing
from window_gate.pricing.rules import Estimate, Tables
from window_gate.template import service as templates
from window_gate.template.service import TemplateInfo
from window_gate.window import repository as windows
from window_gate.window import service as window_service
from window_gate.window.rule import Policy
from window_gate.window.schemas import WindowOut

TEMPLATE = "template"
MARKETING = "MARKETING"
OPAQUE_PREFIX = "wg:"  # biz_opaque_callback_data = "wg:<message id>": status webhooks find the record
log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Sent:
    out: SendOut
    meta: dict[str, Any]  # Meta's own answer, for the Graph-compatible pass-through


@dataclass(frozen=True, slots=True)
class Held:
    """202: held until the customer replies (message/held.py)."""

    out: HeldOut


@dataclass(frozen=True, slots=True)
class Request:
    """What the caller asked for, checked."""

    phone_number_id: str
    kind: str  # Meta's `type`: text, image, template, …
    to: str  # as the caller wrote it: phone number or BSUID
    ref: CustomerRef
    body: dict[str, Any]  # Meta's message body, without `phone_number_id`
    idempotency_key: str | None
    request_hash: str


@dataclass(frozen=True, slots=True)
class Decision:
    """Why the gate lets the send go: the window, the template's check and the price, as of `at`."""

    window: WindowOut
    template: TemplateInfo | None  # None for free-form messages
    estimate: Estimate
    at: datetime


@dataclass(frozen=True, slots=True)
class Attempt:
    """A send recorded `pending` and on its way: what the last two phases read."""

    gate: Gate
    caller: Caller
    request: Request
    decision: Decision
    id: uuid.UUID
    access_token: str | None  # the number's own, if it has one


@dataclass(frozen=True, slots=True)
class Outcome:
    """Meta's answer, or its absence: the record's final word."""

    status: MessageStatus
    response_status: int
    response: dict[str, Any]  # the stored answer (see `stored_answer`), what a replay gives
    at: datetime
    error: object = None
    graph_message_id: str | None = None
    wa_id: str | None = None
    refusal: GraphError | None = None  # Meta's refusal, for what the gate learns from it


async def send(gate: Gate, caller: Caller, body: dict[str, Any], idempotency_key: str | None) -> Sent | Held:
    """Gated: decided, recorded, sent, settled. Held only as the replay of a held message's key."""
    request = checked(caller, body, idempotency_key)
    if idempotency_key:
        previous = await _previous(gate, caller, idempotency_key, request.request_hash)
        if previous is not None:
            return previous
    try:
        decision = await decide(gate, request)
        attempt = await record(gate, caller, request, decision)
    except GateError:
        metrics.SENDS.labels(_kind(request), REFUSED).inc()
        raise
    if not isinstance(attempt, Attempt):  # a concurrent request with the same key won the race: its answer
        return await first_with_key(gate, caller, request) if attempt is None else attempt
    try:
        answer = await gate.graph.send_message(
            request.phone_number_id, outbound(attempt), attempt.access_token
        )
    except GraphFailure as exc:
        raise await refused(attempt, exc) from None
    except asyncio.CancelledError:
        # Cut off while at Meta (a stop's SHUTDOWN_GRACE_SECONDS ran out): it may have left. Said so, rather
        # than the server's bare 500 that invites a send again; the record stays `pending`, then `unknown`.
        raise UpstreamTimeout(
            "the gate stopped while Meta had the message: it may have left and is not re-sent; "
            f"GET /v1/messages/{attempt.id} (or a retry with the same Idempotency-Key) shows what is known",
            id=str(attempt.id),
            message_status=MessageStatus.UNKNOWN,
        ) from None
    return await accepted(attempt, answer)


# Meta's status updates on POST /{phone_number_id}/messages: mark as read, with or without a typing
# indicator. They reach no customer but the author of a message already received.
STATUS_UPDATE = "status"
RECIPIENT_FIELDS = ("to", "recipient", "type")


def is_status_update(body: dict[str, Any]) -> bool:
    return STATUS_UPDATE in body


async def update_status(
    gate: Gate, caller: Caller, phone_number_id: str, body: dict[str, Any]
) -> dict[str, Any]:
    """Meta's answer to a status update (`{"success": true}`). Not a send: no window, template or price
    check, nothing recorded or counted, and no Idempotency-Key (marking read twice changes nothing). A
    body that also names a recipient could be a send without the checks: refused."""
    caller.require(Role.SEND, phone_number_id)
    if named := [field for field in RECIPIENT_FIELDS if field in body]:
        raise ValidationFailed(
            f"a status update (`status`) names a `message_id`, not a recipient: `{named[0]}` is not accepted "
            "with it"
        )
    async with gate.autocommit.connect() as conn:
        token = gate.part(Sealer).open(await repository.access_token(conn, phone_number_id))
    try:
        return await gate.graph.send_message(phone_number_id, body, token)
    except GraphFailure as exc:
        raise verdict(exc)[1] from None


def checked(caller: Caller, body: dict[str, Any], idempotency_key: str | None) -> Request:
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
    request_hash = hashlib.sha256(
        orjson.dumps([phone_number_id, body], option=orjson.OPT_SORT_KEYS)
    ).hexdigest()
    return Request(phone_number_id, kind, to, parse_customer(to), body, idempotency_key, request_hash)


async def decide(gate: Gate, request: Request) -> Decision:
    """The window, the template, marketing delivery and consent checks, and the price; a refusal raises
    here, before any write."""
    now = window_service.now()
    [window] = await window_service.check(
        gate.hot, request.phone_number_id, [request.ref], gate.part(Policy), now
    )
    template: TemplateInfo | None = None
    tables = gate.part(Tables)
    recipient = window.customer.wa_id or window.customer.user_id or request.to
    if request.kind == TEMPLATE:
        async with gate.engine.connect() as conn:
            template = await templates.check_send(conn, request.phone_number_id, request.body[TEMPLATE])
            # The registry's word only: a template it does not know is not refused on a guess.
            if template.category == MARKETING:
                pricing.check_marketing_delivered(tables, recipient=recipient, at=now)
                await consent.check_marketing(conn, request.phone_number_id, request.ref.aliases())
                await consent.check_hold(conn, request.phone_number_id, request.ref.aliases(), now)
    elif not window.can_send_free_form:
        raise closed(window)
    estimate = await pricing.estimate_send(
        gate.autocommit,
        tables,
        gate.part(pricing.FreeTiers),
        phone_number_id=request.phone_number_id,
        # An unknown template category is priced as the dearest (marketing), so budgets err on the safe side.
        category=(template.category or MARKETING) if template else None,
        recipient=recipient,
        window=window,
        at=now,
    )
    return Decision(window, template, estimate, now)


def closed(window: WindowOut) -> WindowClosed:
    return WindowClosed(
        f"free-form messages need an open window; it is {window.state.value}: send an approved template",
        window=window.model_dump(mode="json"),
        hint="send a template message (type `template`); only the customer's reply reopens the window",
    )


async def decide_free_form(
    gate: Gate, phone_number_id: str, requests: list[Request]
) -> list[Decision | GateError]:
    """`decide` for free-form messages of one number sent together (a release round, message/held.py):
    one window check and one free-tier count for them all. Each its decision, or its refusal."""
    now = window_service.now()
    found = await window_service.check(
        gate.hot, phone_number_id, [r.ref for r in requests], gate.part(Policy), now
    )
    open_ = [(r, w) for r, w in zip(requests, found, strict=True) if w.can_send_free_form]
    estimates = iter(
        await pricing.estimate_sends(
            gate.autocommit,
            gate.part(Tables),
            gate.part(pricing.FreeTiers),
            phone_number_id=phone_number_id,
            sends=[(None, w.customer.wa_id or w.customer.user_id or r.to, w) for r, w in open_],
            at=now,
        )
    )
    return [Decision(w, None, next(estimates), now) if w.can_send_free_form else closed(w) for w in found]


def new_id() -> uuid.UUID:
    """A message's (or continuation's) id: a UUIDv7, its first 48 bits the time in milliseconds, so ids
    are made in order and land at the right-hand edge of the primary key's B-tree (a UUIDv4's random
    place grows it page by page, over the whole index: bench.ids), and a month's ids are one range of
    values (docs/scaling.md, partitions). Its last byte stays random: it picks the release share
    (held.shard_of). `compat`: a plain uuid.UUID, which asyncpg and orjson write as they are."""
    return uuid_utils.uuid7()


async def record(
    gate: Gate, caller: Caller, request: Request, decision: Decision, held: uuid.UUID | None = None
) -> Attempt | Sent | Held | None:
    """The send, `pending`, before it leaves; the answer of the first request instead when a concurrent
    one with the same Idempotency-Key recorded first. `held`: a held message released (message/held.py)
    becomes the send; None when it is no longer held.

    A free send is one statement on the hot pool (autocommit); a paid one reserves its budget in the same
    transaction there, so a budget refusal leaves nothing recorded and nothing sent."""
    message_id = held or new_id()
    estimate = decision.estimate
    write = _claim if held else _insert
    if not estimate.amount:
        pending = await write(gate.hot, caller, request, decision, message_id)
    else:
        async with gate.hot.transaction() as conn:
            pending = await write(conn, caller, request, decision, message_id)
            if pending is not None:
                await pricing.reserve(
                    conn,
                    phone_number_id=request.phone_number_id,
                    api_key_id=caller.id,
                    amount=estimate.amount,
                    currency=estimate.currency,
                    at=decision.at,
                )
    if pending is None:
        return None if held else await first_with_key(gate, caller, request)
    token = gate.part(Sealer).open(pending.access_token)
    return Attempt(gate, caller, request, decision, message_id, token)


async def _insert(
    conn: AsyncConnection | Rows, caller: Caller, request: Request, decision: Decision, id: uuid.UUID
) -> repository.Pending | None:
    return await repository.insert_pending(
        conn,
        id=id,
        api_key_id=caller.id,
        idempotency_key=request.idempotency_key,
        request_hash=request.request_hash,
        phone_number_id=request.phone_number_id,
        recipient_input=request.to,
        type=request.kind,
        body=request.body,  # with the caller's own biz_opaque_callback_data, not the gate's
        window=decision.window.model_dump(mode="json"),
        estimate=pricing.estimate_columns(decision.estimate),
        at=decision.at,
    )


async def _claim(
    conn: AsyncConnection | Rows, caller: Caller, request: Request, decision: Decision, id: uuid.UUID
) -> repository.Pending | None:
    claimed = await repository.claim_held(
        conn, request.phone_number_id, [_claim_of(decision, id)], decision.at
    )
    return claimed.get(id)


def _claim_of(decision: Decision, id: uuid.UUID) -> repository.Claim:
    return repository.Claim(
        id, decision.window.model_dump(mode="json"), pricing.estimate_columns(decision.estimate)
    )


async def record_held(
    gate: Gate, phone_number_id: str, released: list[tuple[Caller, Request, Decision, uuid.UUID]]
) -> list[Attempt | GateError | None]:
    """`record` for held messages of one number released together (message/held.py), in one statement
    for the free ones and one transaction per key for the paid ones (their total reserved at once; a
    budget that refuses the total takes them one by one, in order, as `record` does). Each its attempt,
    its refusal (budget), or None when it is no longer held."""
    if not released:
        return []
    at = released[0][2].at
    keys: dict[str | None, list[tuple[Caller, Request, Decision, uuid.UUID]]] = {}
    for item in released:  # the free ones under None: no budget to reserve
        keys.setdefault(item[0].id if item[2].estimate.amount else None, []).append(item)
    done: dict[uuid.UUID, Attempt | GateError | None] = {}
    sealer = gate.part(Sealer)
    for key, items in keys.items():
        claims = [_claim_of(decision, id) for _, _, decision, id in items]
        try:
            if key is None:
                claimed = await repository.claim_held(gate.hot, phone_number_id, claims, at)
            else:
                async with gate.hot.transaction() as conn:
                    claimed = await repository.claim_held(conn, phone_number_id, claims, at)
                    total = sum((d.estimate.amount for _, _, d, id in items if id in claimed), Decimal(0))
                    currency = items[0][2].estimate.currency
                    if not await pricing.fits(
                        conn,
                        phone_number_id=phone_number_id,
                        api_key_id=key,
                        amount=total,
                        currency=currency,
                        at=at,
                    ):
                        raise _OverBudget
        except _OverBudget:
            for caller, request, decision, id in items:
                try:
                    attempt = await record(gate, caller, request, decision, held=id)
                except GateError as err:
                    done[id] = err
                else:
                    done[id] = attempt if isinstance(attempt, Attempt) else None
            continue
        for caller, request, decision, id in items:
            pending = claimed.get(id)
            token = sealer.open(pending.access_token) if pending else None
            done[id] = Attempt(gate, caller, request, decision, id, token) if pending else None
    return [done[id] for _, _, _, id in released]


class _OverBudget(Exception):
    """Held messages' total refused by a budget: their transaction rolls back."""


async def first_with_key(gate: Gate, caller: Caller, request: Request) -> Sent | Held:
    """The answer of the request that recorded this Idempotency-Key first (only a key collides)."""
    key = request.idempotency_key
    previous = await _previous(gate, caller, key, request.request_hash) if key else None
    if previous is None:
        raise GateError("the send could not be recorded, and no earlier record holds its Idempotency-Key")
    return previous


def outbound(attempt: Attempt) -> dict[str, Any]:
    """The body Meta gets: the caller's, carrying the gate's id back in status webhooks."""
    return {**attempt.request.body, "biz_opaque_callback_data": f"{OPAQUE_PREFIX}{attempt.id}"}


async def accepted(attempt: Attempt, answer: dict[str, Any]) -> Sent:
    """Meta took the send: its wamid and wa_id recorded, the answer stored for replays. A template Meta
    holds to judge its quality is recorded `held_for_quality_assessment`, not `accepted`."""
    sent, outcome = _answered(attempt, answer)
    await _final_word(attempt, outcome, _write_accepted, f"Meta accepted it as {outcome.graph_message_id}")
    await _learn(attempt, outcome)
    return sent


async def accepted_all(gate: Gate, answered: list[tuple[Attempt, dict[str, Any]]]) -> list[Sent | GateError]:
    """`accepted` for sends answered together (a release round, message/held.py): their outcomes in one
    round trip; if that fails, each written as `accepted` writes it (retried in the background)."""
    made = [_answered(attempt, answer) for attempt, answer in answered]
    results: list[Sent | GateError] = []
    try:
        await repository.finish_all(
            gate.hot,
            [_finished(attempt, outcome) for (attempt, _), (_, outcome) in zip(answered, made, strict=True)],
        )
    except Exception:
        for (attempt, _), (sent, outcome) in zip(answered, made, strict=True):
            try:
                await _final_word(
                    attempt, outcome, _write_accepted, f"Meta accepted it as {outcome.graph_message_id}"
                )
            except GateError as lost:
                results.append(lost)
            else:
                results.append(sent)
    else:
        results = [sent for sent, _ in made]
    for (attempt, _), (_, outcome) in zip(answered, made, strict=True):
        await _learn(attempt, outcome)
    return results


def _answered(attempt: Attempt, answer: dict[str, Any]) -> tuple[Sent, Outcome]:
    request, decision = attempt.request, attempt.decision
    contact = (answer.get("contacts") or [{}])[0]
    message = (answer.get("messages") or [{}])[0]
    wamid = str(message.get("id") or "") or None
    status = ANSWERED.get(str(message.get("message_status")), MessageStatus.ACCEPTED)
    metrics.SENDS.labels(_kind(request), status.value).inc()
    if (estimate := decision.estimate).amount:  # what a budget reserved: the cost per day on the dashboard
        metrics.SPEND.labels(estimate.currency, estimate.category.value).inc(float(estimate.amount))
    wa_id = contact.get("wa_id")
    out = SendOut(
        id=attempt.id,
        graph_message_id=wamid,
        status=status,
        recipient=RecipientOut(input=request.to, wa_id=wa_id),
        window=decision.window,
        pricing_estimate=pricing.estimate_out(decision.estimate),
    )
    outcome = Outcome(
        status,
        201,
        stored_answer(out, answer),
        window_service.now(),
        graph_message_id=wamid,
        wa_id=wa_id,
    )
    return Sent(out, answer), outcome


async def _learn(attempt: Attempt, outcome: Outcome) -> None:
    spelling = attempt.request.ref.wa_id
    if outcome.wa_id and spelling and outcome.wa_id != spelling:
        await _learn_alias(attempt.gate, spelling, outcome.wa_id)


async def refused(attempt: Attempt, exc: GraphFailure) -> GateError:
    """Meta refused the send, was silent or out of reach: the gate's error for it, once recorded."""
    status, err, error = verdict(exc)
    metrics.SENDS.labels(_kind(attempt.request), status.value).inc()
    err.context["id"] = str(attempt.id)
    if isinstance(err, MarketingLimited):  # which customer to leave alone, and until when
        err.context["customer"] = attempt.decision.window.customer.model_dump(mode="json")
        until = window_service.now() + timedelta(seconds=int(err.context["retry_after"]))
        err.context["retry_not_before"] = until.isoformat()
    outcome = Outcome(
        status,
        err.status,
        stored_refusal(err.problem()),
        window_service.now(),
        error=error,
        refusal=exc if isinstance(exc, GraphError) else None,
    )
    await _final_word(attempt, outcome, _write_refused, OUTCOMES[status].format(code=err.code))
    return err


REFUSED = "refused"  # SENDS: refused by the gate before Meta (window, template, consent, budget, …)


def _kind(request: Request) -> str:
    return TEMPLATE if request.kind == TEMPLATE else "free_form"


def verdict(exc: GraphFailure) -> tuple[MessageStatus, GateError, object]:
    """(the status to record, the caller's error, the error to record) for a failed call to Meta."""
    if isinstance(exc, GraphError):
        # An answer that is not Meta's error object (a proxy's HTML page) still says why on the record.
        return (
            MessageStatus.FAILED,
            gate_error(exc),
            exc.raw or {"http_status": exc.http_status, "reason": exc.message},
        )
    if isinstance(exc, GraphUnreachable):
        reason = f"Meta could not be reached ({exc}); nothing was sent"
        return MessageStatus.NOT_SENT, UpstreamError(reason), {"reason": str(exc)}
    # GraphOutcomeUnknown, and whatever else: never say "not sent" of what may have left.
    reason = f"no answer from Meta ({exc}); the message may have left: it is not re-sent"
    return MessageStatus.UNKNOWN, UpstreamTimeout(reason), {"reason": str(exc)}


async def _write_accepted(attempt: Attempt, outcome: Outcome) -> None:
    await repository.finish(attempt.gate.hot, _finished(attempt, outcome))


def _finished(attempt: Attempt, outcome: Outcome) -> dict[str, Any]:
    return {
        "id": attempt.id,
        "status": outcome.status,
        "at": outcome.at,
        "graph_message_id": outcome.graph_message_id,
        "wa_id": outcome.wa_id,
        "error": outcome.error,
        "response_status": outcome.response_status,
        "response": outcome.response,
    }


async def _write_refused(attempt: Attempt, outcome: Outcome) -> None:
    """In one transaction: the record's final word; the budget back when the send surely did not leave;
    what Meta's refusal says of the window and the template (Meta's word beats ours)."""
    request, decision = attempt.request, attempt.decision
    async with attempt.gate.engine.begin() as conn:
        finished = await repository.finish(conn, _finished(attempt, outcome))
        if not finished:  # an earlier try committed unseen: the rest is done too
            return
        if outcome.status != MessageStatus.UNKNOWN:
            await pricing.release(
                conn,
                phone_number_id=request.phone_number_id,
                api_key_id=attempt.caller.id,
                amount=decision.estimate.amount,
                at=decision.at,
            )
        code = outcome.refusal.code if outcome.refusal is not None else None
        customer = decision.window.customer
        if code in (RE_ENGAGEMENT, *MARKETING_HOLDS) and (customer.wa_id or customer.user_id):
            customer_id = await customers.link(
                conn, customer.wa_id, customer.user_id, "send", also_move=windows.move_windows
            )
            if code == RE_ENGAGEMENT:
                await windows.record_verdicts(
                    conn, [windows.Verdict(request.phone_number_id, customer_id, outcome.at, None)]
                )
            else:
                await consent.remember_hold(conn, request.phone_number_id, customer_id, code, outcome.at)
        if code and request.kind == TEMPLATE:
            await templates.learn_from_meta_error(conn, request.phone_number_id, request.body[TEMPLATE], code)


async def _learn_alias(gate: Gate, spelling: str, wa_id: str) -> None:
    """Meta told us how this spelling maps to the account (BR ninth digit, MX 521, …): remember it. Only
    a shortcut for later lookups: the send is recorded, so its failure does not change the answer."""
    try:
        async with gate.engine.begin() as conn:
            await customers.link(
                conn, wa_id, None, "send", aliases=[spelling], also_move=windows.move_windows
            )
    except Exception:
        log.warning("alias %s → %s not learnt", spelling, wa_id, exc_info=True)


# What the gate knows of a send whose outcome it could not record, by the status it meant to record.
OUTCOMES = {
    MessageStatus.FAILED: "Meta refused it ({code})",
    MessageStatus.UNKNOWN: "Meta did not answer",
    MessageStatus.NOT_SENT: "Meta could not be reached",
}
# Past Meta's timeout, a request still `pending` is not waiting for Meta any more: its process died, or the
# database failed as it wrote the outcome.
IN_FLIGHT_SLACK_SECONDS = 5
FINAL_WORD_RETRIES = (0.2, 0.5, 1, 2, 5, 10, 30, 60, 60, 60, 60, 60)  # about 6 minutes
Write = Callable[[Attempt, Outcome], Awaitable[None]]


async def _final_word(attempt: Attempt, outcome: Outcome, write: Write, words: str) -> None:
    """Record the outcome of a request that has left for Meta. If the database fails now, "nothing was
    decided" (503) would be false and invite a second send: the answer is 504, outcome unknown, with the
    gate's id; the write is retried in the background, so a retry with the same Idempotency-Key soon finds
    the real outcome (a process that dies first leaves the record `pending`, later `unknown`, and Meta's
    status webhooks still find it by its id)."""
    try:
        await write(attempt, outcome)
    except Exception as exc:
        log.warning("send %s: outcome not recorded (%r); retrying in the background", attempt.id, exc)
        background = attempt.gate.background
        task = asyncio.create_task(_retry(write, attempt, outcome))
        background.add(task)
        task.add_done_callback(background.discard)
        raise UpstreamTimeout(
            f"the message left for Meta ({words}) but the gate could not record the outcome: it is unknown "
            f"for now and is not re-sent; GET /v1/messages/{attempt.id} (or a retry with the same "
            "Idempotency-Key) shows it once recorded",
            id=str(attempt.id),
            message_status=MessageStatus.UNKNOWN,  # `status` is the HTTP status in a problem
            **({"graph_message_id": outcome.graph_message_id} if outcome.graph_message_id else {}),
        ) from None


async def _retry(write: Write, attempt: Attempt, outcome: Outcome) -> None:
    for delay in FINAL_WORD_RETRIES:
        await asyncio.sleep(delay)
        try:
            await write(attempt, outcome)
        except Exception as exc:
            log.debug("send %s: outcome still not recorded (%r)", attempt.id, exc)
        else:
            log.info("send %s: outcome recorded after all", attempt.id)
            return
    log.warning("send %s: outcome never recorded; it stays pending, then unknown", attempt.id)


# --- replays: the first answer given for an Idempotency-Key ----------------------------------------------
# The stored answer names its shape, so a later change of SendOut or of the problem body still replays the
# rows written before it. Rows from before versions (version 1) hold the SendOut fields plus `meta`, or the
# problem itself: `response_status` tells which.
ANSWER_VERSION = 2


def stored_answer(out: SendOut, meta: dict[str, Any]) -> dict[str, Any]:
    return {"version": ANSWER_VERSION, "out": out.model_dump(mode="json"), "meta": meta}


def stored_refusal(problem: dict[str, Any]) -> dict[str, Any]:
    return {"version": ANSWER_VERSION, "problem": problem}


def stored_hold(out: HeldOut) -> dict[str, Any]:
    return {"version": ANSWER_VERSION, "held": out.model_dump(mode="json")}


def replayed(response_status: int, stored: dict[str, Any]) -> Sent | Held:
    """The stored answer given again: the Sent, or the refusal raised."""
    version = stored.get("version", 1)
    if version == 1:
        if response_status >= 400:
            raise replay(stored)
        out = {k: v for k, v in stored.items() if k != "meta"}
        return Sent(SendOut.model_validate(out), stored.get("meta", {}))
    if version == ANSWER_VERSION:
        if "problem" in stored:
            raise replay(stored["problem"])
        if "held" in stored:  # still waiting for the customer's reply (or expired, cancelled: GET says)
            return Held(HeldOut.model_validate(stored["held"]))
        return Sent(SendOut.model_validate(stored["out"]), stored["meta"])
    # Written by a newer gate (a rolling upgrade): better no answer than a wrong one; nothing is re-sent.
    raise GateError(f"the first answer for this Idempotency-Key has version {version}, newer than this gate")


async def _previous(gate: Gate, caller: Caller, key: str, request_hash: str) -> Sent | Held | None:
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
        answer = _answer_of(previous, in_flight)
        if answer is not None:
            return answer
        await asyncio.sleep(0.05)


def _answer_of(previous: repository.Previous, in_flight: float) -> Sent | Held | None:
    """The answer the first request gave, or would have given; None while it may still be in flight."""
    if previous.response is not None and previous.response_status is not None:
        return replayed(previous.response_status, previous.response)
    if previous.status in LEFT and previous.window is not None:
        return _left(previous)
    if previous.status != MessageStatus.PENDING or previous.age > in_flight:
        raise UpstreamTimeout(
            "the first request with this Idempotency-Key has no known outcome; it is not re-sent",
            id=str(previous.id),
            message_status=MessageStatus.UNKNOWN,  # `status` is the HTTP status in a problem
            **({"graph_message_id": previous.graph_message_id} if previous.graph_message_id else {}),
        )
    return None


def _left(previous: repository.Previous) -> Sent:
    """Meta's answer was lost (the process died) but its status webhooks told us the message left."""
    recipient = RecipientOut(input=previous.recipient_input, wa_id=previous.recipient_wa_id)
    out = SendOut(
        id=previous.id,
        graph_message_id=previous.graph_message_id,
        status=previous.status,
        recipient=recipient,
        window=WindowOut.model_validate(previous.window),
    )
    meta = {
        "messaging_product": "whatsapp",
        "contacts": [{"input": previous.recipient_input, "wa_id": previous.recipient_wa_id}],
        "messages": [{"id": previous.graph_message_id}],
    }
    return Sent(out, meta)
