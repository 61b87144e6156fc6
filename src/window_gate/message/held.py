"""Continue the conversation: a message for a closed window waits for the customer's reply.

The first such message for a (number, customer) starts a wait: the re-engagement template goes out as any
gated template send (a refusal answers as for that send, and holds nothing), then the message is held. Later
ones join the wait: one template per wait, whichever replica they reach (an advisory lock per pair decides
start-or-join; a partial unique index backs it). The customer's next message (webhook ingest's statement
marks the wait `replied`) wakes its share's release job (one at a time per share): in rounds, the oldest held
message of every replied wait goes out side by side (first messages first, for everyone), each gated,
recorded and sent as any send (a round's messages of one number together: one statement each for the
window check, the claim and Meta's answers); a wait's next message only after Meta answered the one
before. A chore
(message/jobs.py) expires what waited too long, ends the waits whose template Meta failed, settles waits a
dead process left `sending`, and re-enqueues releases a crash lost.

Never twice: a held message becomes `pending` in the statement that takes it out of the wait (one claimant),
before it leaves; a crash then leaves it `pending`, later `unknown`, as any send.
"""

import asyncio
import functools
import time
import uuid
from datetime import timedelta
from typing import Any

from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from window_gate import jobs, metrics
from window_gate.apikey.rules import Caller
from window_gate.customer import service as customers
from window_gate.customer.identity import parse_customer
from window_gate.db import Coalescer
from window_gate.errors import GateError, GraphFailure, UpstreamTimeout, WindowClosed, replay
from window_gate.kit import Gate
from window_gate.message import repository, service
from window_gate.message.schemas import ContinuationOut, HeldOut, HoldIn
from window_gate.message.service import Attempt, Held, Request, Sent
from window_gate.message.status import MessageStatus
from window_gate.pricing.schemas import EstimateOut
from window_gate.subscription.repository import Event, emit, iso
from window_gate.window import repository as windows
from window_gate.window import service as window_service

RELEASE = "conversation.release"
WAIT_POLL_SECONDS = 0.05


async def send(
    gate: Gate, caller: Caller, body: dict[str, Any], idempotency_key: str | None, hold: HoldIn | None
) -> Sent | Held:
    """POST /v1/messages: sent now (201) if the window allows it; else, with `hold`, held (202)."""
    if hold is None:
        return await service.send(gate, caller, body, idempotency_key)
    kept = dict(body)
    try:
        return await service.send(gate, caller, body, idempotency_key)
    except WindowClosed as closed:
        request = service.checked(caller, kept, idempotency_key)
        return await _hold(gate, caller, request, hold, closed)


async def _hold(
    gate: Gate, caller: Caller, request: Request, hold: HoldIn, closed: WindowClosed
) -> Sent | Held:
    async with gate.engine.connect() as conn:
        template = hold.template or await repository.default_template(conn, request.phone_number_id)
    if template is None:
        raise closed
    window = closed.context["window"]
    customer = window["customer"]
    async with gate.engine.begin() as conn:
        customer_id = await customers.link(
            conn,
            customer.get("wa_id") or request.ref.wa_id,
            customer.get("user_id") or request.ref.user_id,
            "send",
            also_move=windows.move_windows,
        )
    patience = time.monotonic() + gate.settings.graph_timeout_seconds + service.IN_FLIGHT_SLACK_SECONDS
    seen: uuid.UUID | None = None  # a wait being started by another request, which this one waits for
    while True:
        async with gate.engine.begin() as conn:
            await repository.lock_conversation(conn, request.phone_number_id, customer_id)
            wait = await repository.waiting(conn, request.phone_number_id, customer_id)
            if wait is not None and wait.state == "awaiting_reply":
                metrics.HELD.labels("joined").inc()
                return await _held(conn, gate, caller, request, hold, window, wait, None)
            if wait is None and seen is not None:
                # The wait this request saw starting is over: its template was refused (answered as
                # that refusal), or the customer has replied since (the window is open: a send now).
                before = await repository.wait_by_id(conn, seen)
                if before is not None and before.state == "failed" and before.reason:
                    raise replay(before.reason)
                return await send(
                    gate,
                    caller,
                    {**request.body, "phone_number_id": request.phone_number_id},
                    request.idempotency_key,
                    hold,
                )
            if wait is None:
                started = service.new_id()
                await repository.start_wait(conn, started, request.phone_number_id, customer_id, caller.id)
                break
        seen = wait.id
        if time.monotonic() > patience:
            raise UpstreamTimeout(
                "another request's re-engagement template has no known outcome yet; nothing was held",
                continuation_id=str(wait.id),
            )
        await asyncio.sleep(WAIT_POLL_SECONDS)
    template_body = {
        "phone_number_id": request.phone_number_id,
        "messaging_product": "whatsapp",
        "to": request.to,
        "type": service.TEMPLATE,
        service.TEMPLATE: template,
    }
    if "recipient" in request.body:
        template_body["recipient"] = template_body.pop("to")
    try:
        sent = await service.send(gate, caller, template_body, f"{repository.TEMPLATE_KEY_PREFIX}{started}")
    except GateError as err:
        async with gate.engine.begin() as conn:
            if isinstance(err, UpstreamTimeout) and "id" in err.context:
                # The template may have left: the wait stands (requests joining it send no second one);
                # this request holds nothing, and its retry with the same Idempotency-Key joins.
                await repository.settle_wait(
                    conn,
                    started,
                    "awaiting_reply",
                    from_states=("sending",),
                    template_message_id=uuid.UUID(str(err.context["id"])),
                )
            else:
                await repository.settle_wait(
                    conn, started, "failed", from_states=("sending",), reason=err.problem()
                )
        raise
    async with gate.engine.begin() as conn:
        if await repository.settle_wait(
            conn, started, "awaiting_reply", from_states=("sending",), template_message_id=sent.out.id
        ):
            wait = repository.Wait(started, "awaiting_reply", sent.out.id, None)
            metrics.HELD.labels("started").inc()
            return await _held(conn, gate, caller, request, hold, window, wait, sent.out.pricing_estimate)
    # The wait is gone: Meta's answer to the template named an account the gate knew under another
    # spelling, the two customers merged, and this wait with its customer (the other one's wait stays).
    # The message joins that wait, as any later one would.
    return await _hold(gate, caller, request, hold, closed)


async def _held(
    conn: AsyncConnection,
    gate: Gate,
    caller: Caller,
    request: Request,
    hold: HoldIn,
    window: dict[str, Any],
    wait: repository.Wait,
    estimate: EstimateOut | None,
) -> Sent | Held:
    """Hold the message in `wait` (the caller's transaction); its 202."""
    now = window_service.now()
    message_id = service.new_id()
    hold_until = now + timedelta(seconds=hold.hold_seconds)
    waiting = len(await repository.held_ids(conn, wait.id)) + 1  # under the pair's lock: exact
    out = HeldOut(
        id=message_id,
        status=MessageStatus.HELD,
        continuation=ContinuationOut(
            id=wait.id,
            state=wait.state,
            template_message_id=wait.template_message_id,
            held=waiting,
            hold_until=hold_until,
        ),
        pricing_estimate=estimate,
    )
    recorded = await repository.insert_held(
        conn,
        id=message_id,
        continuation_id=wait.id,
        api_key_id=caller.id,
        idempotency_key=request.idempotency_key,
        request_hash=request.request_hash,
        phone_number_id=request.phone_number_id,
        recipient_input=request.to,
        type=request.kind,
        body=request.body,
        window=window,
        response=service.stored_hold(out),
        hold_until=hold_until,
        at=now,
    )
    if not recorded:  # a concurrent request with the same Idempotency-Key recorded first
        return await service.first_with_key(gate, caller, request)
    return Held(out)


# --- release: after the customer's reply, one job per share of the waits -------------------------------


class Waker(Coalescer[list[uuid.UUID], None]):
    """Wakes the releases of replied waits, for webhook ingest: replies arriving together enqueue their
    shares' jobs in one transaction (db.Coalescer; a share's job is one row whatever the replies). One per
    process, made by the lifespan."""

    def __init__(self, engine: AsyncEngine) -> None:
        super().__init__(functools.partial(_wake, engine), max_group=1000)


async def _wake(engine: AsyncEngine, replied: list[list[uuid.UUID]]) -> list[None]:
    async with engine.begin() as conn:
        await enqueue(conn, [c for waits in replied for c in waits])
    return [None] * len(replied)


async def enqueue(conn: AsyncConnection, continuation_ids: list[uuid.UUID]) -> None:
    for shard in sorted({shard_of(c) for c in continuation_ids}):
        await jobs.enqueue(conn, RELEASE, {"shard": shard}, key=f"{RELEASE}:{shard}")


# Waits are released by RELEASE_SHARDS jobs side by side (each its share of the waits, at most one job
# per share queued or running), so that several processes' CPUs release at once (bench/release.py: one
# process was the limit). A release round: the next held message of up to ROUND replied waits of the
# share, decided, claimed and answered together (one statement each per number), sent side by side, at
# most SENDING of a number in flight (a wait's next message waits for the next round: after Meta answered
# this one).
RELEASE_SHARDS = 4
ROUND = 1000
SENDING = 64
LOOK_SECONDS = 0.05  # while rounds are under way, how often a share looks for waits answered since


def shard_of(continuation_id: uuid.UUID) -> int:
    return continuation_id.int % RELEASE_SHARDS  # the uuid's last byte: repository.next_held_of_replied


async def release(gate: Gate, shard: int) -> None:
    """Every replied wait of this share, in rounds until none is left: each round takes the oldest held
    message of every such wait (first messages first, for everyone) and sends them side by side; a wait
    with nothing left is `released`. A round's messages claimed, the next round takes the waits answered
    since while it sends (never a wait with a message in flight: a wait's next message leaves only after
    Meta answered the one before). Resumable: a job run again after a crash goes on from the next held
    message (the one that was in flight is `pending`, later `unknown`)."""
    rounds: dict[asyncio.Task[None], set[uuid.UUID]] = {}  # under way: the waits with a message in flight
    try:
        while True:
            async with gate.engine.begin() as conn:
                await repository.settle_released(conn, shard, RELEASE_SHARDS)
                found = await repository.next_held_of_replied(conn, shard, RELEASE_SHARDS, ROUND)
            out = {wait for waits in rounds.values() for wait in waits}
            batch = [held for held in found if held.continuation_id not in out]
            if batch:
                numbers: dict[str, list[repository.Held]] = {}
                for held in batch:
                    numbers.setdefault(held.phone_number_id, []).append(held)
                claimed = [asyncio.Event() for _ in numbers]
                task = asyncio.create_task(_rounds(gate, list(numbers.values()), claimed))
                rounds[task] = {held.continuation_id for held in batch}
                for event in claimed:
                    await event.wait()
            elif rounds:  # a round ends, or a wait is answered meanwhile
                await asyncio.wait(rounds, timeout=LOOK_SECONDS, return_when=asyncio.FIRST_COMPLETED)
            else:
                return
            for task in [task for task in rounds if task.done()]:
                del rounds[task]
                task.result()  # a round that failed fails the job (retried: it resumes)
    finally:
        await asyncio.gather(*rounds, return_exceptions=True)  # what is in flight is answered and written


async def _rounds(gate: Gate, numbers: list[list[repository.Held]], claimed: list[asyncio.Event]) -> None:
    events = [
        e
        for one in await asyncio.gather(*map(functools.partial(_round, gate), numbers, claimed))
        for e in one
    ]
    metrics.HELD.labels("released").inc(len(events))
    async with gate.engine.begin() as conn:
        await emit(conn, events)


async def _round(gate: Gate, batch: list[repository.Held], claimed: asyncio.Event) -> list[Event]:
    """A round's held messages of one number: each gated, recorded and sent as any send; their
    `message.released`, but for those that ended otherwise (expired, refused by the gate: said by `end`).
    `claimed` is set once they are out of their waits (or the round failed before)."""
    try:
        leaving = await _claim(gate, batch)
    finally:
        claimed.set()
    if not leaving:
        return []
    phone_number_id = batch[0].phone_number_id
    sending = asyncio.Semaphore(SENDING)

    async def send(attempt: Attempt) -> dict[str, Any] | GraphFailure:
        async with sending:
            try:
                return await gate.graph.send_message(
                    phone_number_id, service.outbound(attempt), attempt.access_token
                )
            except GraphFailure as exc:
                return exc

    of = {held.id: held for held in batch}
    answers = await asyncio.gather(*map(send, leaving))
    answered = [
        (a, answer)
        for a, answer in zip(leaving, answers, strict=True)
        if not isinstance(answer, GraphFailure)
    ]
    sent = iter(await service.accepted_all(gate, answered))
    events = []
    for attempt, answer in zip(leaving, answers, strict=True):
        error: dict[str, Any] | None
        try:
            if isinstance(answer, GraphFailure):
                refusal = await service.refused(attempt, answer)
                status, error, wamid = service.verdict(answer)[0], refusal.problem(), None
            else:
                out = next(sent)
                if isinstance(out, GateError):
                    raise out
                status, error, wamid = MessageStatus(out.out.status), None, out.out.graph_message_id
        except GateError as lost:  # the outcome's write failed: retried in the background, unknown for now
            status, error, wamid = MessageStatus.UNKNOWN, lost.problem(), None
        events.append(_released(of[attempt.id], attempt, status, wamid, error))
    return events


async def _claim(gate: Gate, batch: list[repository.Held]) -> list[Attempt]:
    """Expired ones end; the others are decided and claimed (`pending`); those refused fail with their
    reason. The attempts to send."""
    now = window_service.now()
    if due := [held.id for held in batch if held.hold_until <= now]:
        async with gate.engine.begin() as conn:
            await end(conn, due, MessageStatus.EXPIRED)
    batch = [held for held in batch if held.hold_until > now]
    if not batch:
        return []
    phone_number_id = batch[0].phone_number_id
    requests = [_request(held) for held in batch]
    decisions = await service.decide_free_form(gate, phone_number_id, requests)
    go = [
        (held, request, d)
        for held, request, d in zip(batch, requests, decisions, strict=True)
        if not isinstance(d, GateError)
    ]
    attempts = await service.record_held(
        gate, phone_number_id, [(_caller(held), request, d, held.id) for held, request, d in go]
    )
    # It became invalid while it waited (window, budget, …): it fails with its reason.
    refused = [(held.id, d) for held, d in zip(batch, decisions, strict=True) if isinstance(d, GateError)]
    refused += [
        (held.id, a) for (held, _, _), a in zip(go, attempts, strict=True) if isinstance(a, GateError)
    ]
    if refused:
        async with gate.engine.begin() as conn:
            for id, err in refused:
                await end(conn, [id], MessageStatus.FAILED, err.problem())
    return [a for a in attempts if isinstance(a, Attempt)]  # None: cancelled or expired meanwhile


def _request(held: repository.Held) -> Request:
    return Request(
        held.phone_number_id,
        held.type,
        held.recipient_input,
        parse_customer(held.recipient_input),
        held.body,
        None,
        held.request_hash,
    )


def _caller(held: repository.Held) -> Caller:
    return Caller(str(held.api_key_id), held.key_name, held.role, frozenset(held.key_numbers or ()))


def _released(
    held: repository.Held,
    attempt: Attempt,
    status: MessageStatus,
    wamid: str | None,
    error: dict[str, Any] | None,
) -> Event:
    customer = attempt.decision.window.customer
    data = {
        "message_id": str(held.id),
        "continuation_id": str(held.continuation_id),
        "status": status,
        "graph_message_id": wamid,
        "error": error,
    }
    return Event(
        "message.released", window_service.now(), held.phone_number_id, customer.wa_id, customer.user_id, data
    )


async def end(
    conn: AsyncConnection, ids: list[uuid.UUID], status: MessageStatus, error: object = None
) -> list[repository.Ended]:
    """Held messages out of their wait unsent; `message.expired` / `message.released` (failed) said."""
    now = window_service.now()
    ended = await repository.end_held(conn, ids, status, error, now)
    metrics.HELD.labels(status).inc(len(ended))
    kind = {MessageStatus.EXPIRED: "message.expired", MessageStatus.FAILED: "message.released"}.get(status)
    if kind:
        await emit(
            conn,
            [
                Event(
                    kind,
                    now,
                    e.phone_number_id,
                    e.wa_id,
                    e.user_id,
                    {
                        "message_id": str(e.id),
                        "continuation_id": str(e.continuation_id),
                        "status": status,
                        "graph_message_id": None,
                        "error": error,
                        **({"expired_at": iso(now)} if status == MessageStatus.EXPIRED else {}),
                    },
                )
                for e in ended
            ],
        )
    return ended


# --- the chore: every second, once across replicas ----------------------------------------------------
EXPIRE_BATCH = 1000


async def watch(conn: AsyncConnection, in_flight: float) -> None:
    """Expire what waited past hold_until; end waits with nothing left, or whose template Meta failed;
    settle waits left `sending` by a dead process (by their template's outcome); release what was
    replied to (the release job, if a crash lost it or it ended as a reply came: the key keeps it single)."""
    await end(conn, await repository.due_expiries(conn, EXPIRE_BATCH), MessageStatus.EXPIRED)
    replied = []
    for wait in await repository.open_waits(conn):
        # Its template's outcome unknown, a wait may stand empty: for requests retrying to join it.
        unknown = wait.template_status in (MessageStatus.PENDING, MessageStatus.UNKNOWN)
        if wait.state == "replied":
            replied.append(wait.id)
        elif wait.state == "awaiting_reply" and wait.answered:
            if await repository.settle_wait(conn, wait.id, "replied", from_states=("awaiting_reply",)):
                replied.append(wait.id)
        elif wait.state == "awaiting_reply" and wait.template_status == MessageStatus.FAILED:
            reason = {
                "code": "template_failed",
                "detail": "Meta failed the re-engagement template: it is not re-sent by itself",
                "template_message_id": str(wait.template_id),
                "error": wait.template_error,
            }
            await end(conn, await repository.held_ids(conn, wait.id), MessageStatus.FAILED, reason)
            await repository.settle_wait(
                conn, wait.id, "failed", from_states=("awaiting_reply",), reason=reason
            )
        elif wait.state == "awaiting_reply" and not wait.held and (wait.age > in_flight or not unknown):
            await repository.settle_wait(conn, wait.id, "expired", from_states=("awaiting_reply",))
        elif wait.state == "sending" and wait.age > in_flight:
            await _settle_stale(conn, wait)
    await enqueue(conn, replied)


async def _settle_stale(conn: AsyncConnection, wait: repository.OpenWait) -> None:
    """A wait whose starter died while Meta had its template: a template that may have left counts as
    sent (never a second one); one that surely did not, or was never recorded, fails the wait."""
    maybe_left = wait.template_status is not None and wait.template_status not in (
        MessageStatus.FAILED,
        MessageStatus.NOT_SENT,
    )
    if maybe_left:
        await repository.settle_wait(
            conn, wait.id, "awaiting_reply", from_states=("sending",), template_message_id=wait.template_id
        )
    else:
        reason = {"code": "template_not_sent", "status": wait.template_status}
        await repository.settle_wait(conn, wait.id, "failed", from_states=("sending",), reason=reason)


async def cancel(conn: AsyncConnection, phone_number_id: str, aliases: list[str]) -> list[uuid.UUID]:
    """Every message still held for the pair: `cancelled`; the wait with them."""
    wait = await repository.latest_wait(conn, phone_number_id, aliases)
    if wait is None or not wait.held:
        return []
    ended = {e.id for e in await end(conn, wait.held, MessageStatus.CANCELLED)}
    await repository.settle_wait(conn, wait.id, "cancelled", from_states=("awaiting_reply", "sending"))
    return [id for id in wait.held if id in ended]
