"""Webhook ingest: a signed delivery in, window facts forward, the raw bytes kept."""

import contextlib
import functools
import logging
from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import Any
from uuid import UUID

import asyncpg
import orjson
from sqlalchemy.exc import DataError, DBAPIError, IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection

from window_gate import metrics
from window_gate.apikey.service import AllowList
from window_gate.config import Settings
from window_gate.consent import repository as consent
from window_gate.consent import service as consent_service
from window_gate.consent.rules import MARKETING, Keywords
from window_gate.customer import repository as customers
from window_gate.customer import service as customer_service
from window_gate.db import Coalescer, HotPool
from window_gate.kit import Gate
from window_gate.message import held
from window_gate.message.service import OPAQUE_PREFIX
from window_gate.subscription import repository as relay
from window_gate.subscription import service as relay_service
from window_gate.template import repository as templates
from window_gate.template import service as template_service
from window_gate.webhook import repository
from window_gate.webhook.parse import (
    COUNTED_KINDS,
    COUNTED_OUTCOMES,
    NUMBER_QUALITY,
    OTHER,
    AccountEvent,
    ConsentEvent,
    Delivery,
    HoldEvent,
    IdentityEvent,
    TemplateEvent,
    VerdictEvent,
    parse_delivery,
)
from window_gate.window import repository as windows
from window_gate.window.rule import Policy, inbound_time

log = logging.getLogger(__name__)


class DeliveryRecorder(Coalescer[repository.Received, repository.Recorded]):
    """Webhook deliveries arriving together: one statement and one commit (db.Coalescer). One per
    process, made by the lifespan."""

    def __init__(self, hot: HotPool, clock: repository.Clock) -> None:
        super().__init__(
            functools.partial(repository.record, hot, clock), lanes=2, weight=_events, lane_weight=LANE_EVENTS
        )
        self.clock = clock

    @classmethod
    def configured(cls, hot: HotPool, settings: Settings) -> "DeliveryRecorder":
        window, lead = (
            timedelta(hours=settings.window_hours),
            timedelta(seconds=settings.expiring_lead_seconds),
        )
        return cls(hot, repository.Clock(window, lead))


# Events this many waiting open a second statement beside the one in flight, so PostgreSQL works on one
# group while the worker reads the next (bench/, one worker, 32 connections, paired runs): single statuses
# 2,569–2,830 → 3,238–3,325 /s at 16 (at 8 the smaller groups cost commits: 2,883; 32 or more left them in
# one lane); a batch of 100 statuses opens it on its own (15,000 → 18,000 /s).
LANE_EVENTS = 16


def _events(received: repository.Received) -> int:
    return len(received.inbound) + len(received.statuses)


async def ingest(gate: Gate, body: bytes, received_at: datetime) -> Delivery:
    """Keep the delivery and apply it. What Meta mostly sends, messages (from known customers or new ones)
    and statuses, is one statement shared with the deliveries arriving meanwhile; the rest (customers to
    merge or link under contention, Meta's verdicts on windows, consent, templates, business echoes, what
    Meta says of numbers and accounts) follows in one transaction.

    A delivery that cannot be applied (malformed JSON, data PostgreSQL refuses) is kept with the reason,
    once: a retry cannot help. Any other failure (database down, deadlock) raises, so Meta delivers again.
    """
    try:
        delivery = parse_delivery(body, await gate.part(AllowList).numbers())
    except ValueError as exc:
        await _keep_unapplied(gate, body, None, exc)
        return Delivery()
    if delivery.unserved and not delivery.phone_number_ids:
        # ALLOW_LISTED_NUMBERS_ONLY: kept (Meta does not send it again), applied to nothing, relayed to no one.
        # A delivery naming registered numbers too is applied for those only (parse left the rest out).
        reason = f"ALLOW_LISTED_NUMBERS_ONLY: not registered: {', '.join(sorted(delivery.unserved))}"
        async with gate.engine.begin() as conn:
            await repository.store(conn, body, reason)
        return Delivery()
    policy = gate.part(Policy)
    _keyword_consents(delivery, gate.part(Keywords), received_at, policy)
    inbound = [
        repository.Inbound(
            message_id=m.message_id,
            phone_number_id=m.phone_number_id,
            wa_id=m.wa_id,
            user_id=m.user_id,
            type=m.type,
            sent_at=m.sent_at,
            counts_from=inbound_time(m.sent_at, received_at, policy),
            referral=_json(m.referral),
        )
        for m in delivery.inbound
    ]
    statuses = [
        repository.Status(
            own_id=_own_id(st.opaque),
            graph_message_id=st.graph_message_id,
            status=st.status,
            at=st.at,
            error=_json(st.errors[0] if st.errors else None),
            pricing=_json(st.pricing),
            detail=orjson.dumps(st.payload).decode(),
        )
        for st in delivery.statuses
    ]
    try:
        received = repository.Received(body, inbound, statuses, sorted(delivery.phone_number_ids))
        recorder = gate.part(DeliveryRecorder)
        gate.part(relay_service.Busy).note(recorder.in_flight)  # the relay holds back under load
        recorded = await _recorded(recorder, received)
    except (DBAPIError, asyncpg.PostgresError, ValueError) as exc:
        await _keep_unapplied(gate, body, None, exc)
        return delivery
    for st, found in zip(delivery.statuses, recorded.found, strict=True):
        delivery.counts[f"status_{st.status}", "recorded" if found else "unknown_message"] += 1
    fresh, replied = set(recorded.fresh), list(recorded.replied)
    late = [m for m in inbound if m.message_id in recorded.unresolved]
    lessons = [  # Meta's late word on a template the gate sent: paused, disabled, …
        (phone_number_id, template, error["code"])
        for index, phone_number_id, template in recorded.failed_templates
        for error in delivery.statuses[index].errors
        if isinstance(error.get("code"), int) and error["code"] in template_service.LEARNED_STATUS
    ]
    engine = gate.engine.sync_engine
    numbers_known = templates.accounts_known(engine, delivery.accounts) and repository.numbers_known(
        engine, delivery.numbers
    )  # which account each number is in, its display number: nothing new to write
    try:
        if late or delivery.has_more() or lessons or not numbers_known:
            async with gate.engine.begin() as conn:
                await _apply_rest(conn, delivery, late, lessons, received_at, policy)
        if late:  # their customers exist now (committed above)
            clock = gate.part(DeliveryRecorder).clock
            [again] = await repository.record(gate.hot, clock, [repository.Received(None, late)])
            if again.unresolved:
                raise RuntimeError(f"customers of {sorted(again.unresolved)} unresolved; Meta will retry")
            fresh |= again.fresh
            replied += again.replied
    except (DBAPIError, asyncpg.PostgresError, ValueError) as exc:
        await _keep_unapplied(gate, body, recorded.delivery_id, exc)
    if replied:
        await _release(gate, replied)
    for m in delivery.inbound:
        delivery.counts[m.type, "opened" if m.message_id in fresh else "duplicate"] += 1
    return delivery


# A customer the statement found can be merged into another (a send learning that two spellings are one
# account) and deleted before the statement inserts its rows: a foreign key violation, and a statement run
# again finds the customer it was merged into.
FOREIGN_KEY_VIOLATION = "23503"
MERGE_RACE_TRIES = 3


async def _recorded(recorder: DeliveryRecorder, received: repository.Received) -> repository.Recorded:
    for tries_left in reversed(range(MERGE_RACE_TRIES)):
        try:
            return await recorder(received)
        except (DBAPIError, asyncpg.PostgresError) as exc:
            if tries_left == 0 or _sqlstate(exc) != FOREIGN_KEY_VIOLATION:
                raise
            log.info("webhook delivery: a customer merged away meanwhile (%s); applying it again", exc)
    raise AssertionError("unreachable: the last try returns or raises")


def _sqlstate(exc: Exception) -> str:
    return str(getattr(getattr(exc, "orig", exc), "sqlstate", None) or "")


async def _release(gate: Gate, replied: list[UUID]) -> None:
    """Wake a release for each wait the customer answered, now. Not in ingest's statement: if this
    fails, the waits are `replied` already and message/jobs.py's chore enqueues them within a second."""
    try:
        await gate.part(held.Waker)(replied)
    except Exception:
        log.warning("releases of %s not enqueued; the chore will", replied, exc_info=True)


def _json(value: object) -> str | None:
    return None if value is None else orjson.dumps(value).decode()


# SQLSTATE classes of data PostgreSQL refuses whenever it is sent: data exception (NUL in text, bad
# JSON escape), integrity violation, program limit (an id too long to index). A foreign key violation is
# a row deleted meanwhile (a customer merged away), which a retry may fix.
REFUSED_DATA_SQLSTATE_CLASSES = frozenset({"22", "23", "54"})


async def _keep_unapplied(gate: Gate, body: bytes, delivery_id: int | None, exc: Exception) -> None:
    """Keep (or mark) a well-signed delivery that cannot be applied; re-raise anything a retry may fix."""
    sqlstate = _sqlstate(exc)
    refused = sqlstate != FOREIGN_KEY_VIOLATION and (
        isinstance(exc, ValueError | IntegrityError | DataError)
        or sqlstate[:2] in REFUSED_DATA_SQLSTATE_CLASSES
    )
    if not refused:
        raise exc
    log.warning("webhook delivery kept unapplied: %s", exc)
    reason = f"{type(exc).__name__}: {exc}"[:2000]
    async with gate.engine.begin() as conn:
        if delivery_id is None:
            kept = await repository.store(conn, body, reason)
            await relay.relay_unparsed(conn, kept)  # signed by Meta: relayed all the same
        else:
            await repository.mark_unapplied(conn, delivery_id, reason)


async def _apply_rest(
    conn: AsyncConnection,
    delivery: Delivery,
    late: list[repository.Inbound],
    lessons: list[tuple[str, dict[str, Any], int]],
    received_at: datetime,
    policy: Policy,
) -> None:
    await _link_identities(conn, delivery.identities)
    ids = await _customer_ids(conn, [*late, *delivery.verdicts, *delivery.consents, *delivery.holds])
    verdicts = [
        windows.Verdict(
            v.phone_number_id,
            ids[v.wa_id, v.user_id],
            v.closed_at and inbound_time(v.closed_at, received_at, policy),  # same clamp as messages
            v.fep_expires_at,
        )
        for v in delivery.verdicts
    ]
    await windows.record_verdicts(conn, verdicts)
    closed = [(v.phone_number_id, v.customer_id, v.closed_at) for v in verdicts if v.closed_at is not None]
    await relay_service.closed_by_meta(conn, closed, policy.window)
    await consent.record(
        conn,
        [
            consent.Statement(
                c.phone_number_id, ids[c.wa_id, c.user_id], c.category, c.opted_out, c.at, c.source
            )
            for c in delivery.consents
        ],
    )
    holds = (
        consent_service.hold(
            h.phone_number_id, ids[h.wa_id, h.user_id], h.code, inbound_time(h.at, received_at, policy)
        )
        for h in delivery.holds
    )
    await consent.record_holds(conn, [h for h in holds if h is not None])
    for phone_number_id, template, code in lessons:
        await template_service.learn_from_meta_error(conn, phone_number_id, template, code)
    await templates.record_accounts(conn, delivery.accounts)  # a statement only for pairs not seen yet
    for event in delivery.templates:
        await _apply_template(conn, event)
    await relay.emit(
        conn, [_template_event(e, received_at) for e in delivery.templates if e.status is not None]
    )
    await repository.record_numbers(conn, delivery.numbers)  # likewise
    await repository.record_echoes(
        conn,
        [
            repository.Echo(
                e.message_id, e.phone_number_id, e.recipient, e.recipient_user_id, e.type, e.sent_at
            )
            for e in delivery.echoes
        ],
    )
    for quality in delivery.qualities:  # after record_numbers: the same delivery may name the number
        at = quality.at or received_at
        known = await repository.record_quality(
            conn, quality.display_phone_number, quality.event, quality.messaging_limit_tier, at
        )
        delivery.counts[NUMBER_QUALITY, "recorded" if known else "unknown_number"] += 1
    for account in delivery.account:
        await repository.record_account(conn, _account_facts(account, received_at))


def _account_facts(event: AccountEvent, received_at: datetime) -> repository.AccountFacts:
    at = event.at or received_at
    tier = None
    if event.volume_tier is not None:
        info = event.volume_tier
        key = f"{info.get('pricing_category') or ''}/{info.get('region') or ''}".upper()
        moment = _unix(info.get("tier_update_time"))
        tier = (key, {**info, "tier_update_time": moment if moment is not None else int(at.timestamp())})
    return repository.AccountFacts(
        event.waba_id,
        at,
        restrictions=event.restrictions,
        ban_state=event.ban_state,
        ban_date=event.ban_date,
        volume_tier=tier,
        auth_international=event.auth_international,
    )


def _unix(value: object) -> int | None:
    try:
        return int(str(value))
    except ValueError:
        return None


async def _apply_template(conn: AsyncConnection, event: TemplateEvent) -> None:
    """One template webhook: rare, so one statement each, in delivery order."""
    if event.status is not None:
        await templates.apply_status(
            conn,
            waba_id=event.waba_id,
            template_id=event.template_id,
            name=event.name,
            language=event.language,
            status=event.status,
            reason=event.reason,
            category=event.category,
        )
    elif event.quality is not None:
        await templates.apply_quality(conn, event.template_id, event.quality)
    elif event.category is not None:
        await templates.apply_category(conn, event.template_id, event.category, event.previous_category)
    elif event.components_changed:
        await templates.mark_components_stale(conn, event.template_id)


def _template_event(event: TemplateEvent, received_at: datetime) -> relay.Event:
    data = {
        "waba_id": event.waba_id,
        "template_id": event.template_id,
        "name": event.name,
        "language": event.language,
        "status": event.status,
        "reason": event.reason,
        "category": event.category,
    }
    return relay.Event("template.status", received_at, None, None, None, data)


def _keyword_consents(delivery: Delivery, keywords: Keywords, received_at: datetime, policy: Policy) -> None:
    """A customer message that is exactly an opt-out (opt-in) keyword stops (resumes) marketing messages,
    as of the instant the message counts from for the window."""
    for m in delivery.inbound:
        if m.words and (opted_out := keywords.verdict(m.words)) is not None:
            at = inbound_time(m.sent_at, received_at, policy)
            delivery.consents.append(
                ConsentEvent(m.phone_number_id, m.wa_id, m.user_id, MARKETING, opted_out, at, "keyword")
            )
            delivery.counts["keyword", "stop" if opted_out else "resume"] += 1


def _own_id(opaque: str | None) -> UUID | None:
    if opaque and opaque.startswith(OPAQUE_PREFIX):
        with contextlib.suppress(ValueError):
            return UUID(opaque.removeprefix(OPAQUE_PREFIX))
    return None


def count(delivery: Delivery, received_at: datetime) -> None:
    """Metrics only once the transaction committed: each item by kind and outcome (bounded: a kind or
    outcome parse.py does not name is `other`), and how late the delivery's oldest event came."""
    for (kind, outcome), n in delivery.counts.items():
        metrics.child(
            metrics.WEBHOOK_MESSAGES,
            kind if kind in COUNTED_KINDS else OTHER,
            outcome if outcome in COUNTED_OUTCOMES else OTHER,
        ).inc(n)
    times = [m.sent_at for m in delivery.inbound] + [st.at for st in delivery.statuses]
    if times:
        metrics.WEBHOOK_LAG.observe(max(0.0, (received_at - min(times)).total_seconds()))


async def _link_identities(conn: AsyncConnection, identities: Sequence[IdentityEvent]) -> None:
    """Ids Meta says are one person become one customer (merged if each had its own), before anything
    else of the delivery is applied to them."""
    for event in identities:
        known = await customers.resolve(conn, list(event.aliases))
        if len(known) == len(event.aliases) and len(set(known.values())) == 1:
            continue  # linked already: the common case for a parent BSUID
        await customer_service.link(
            conn, event.wa_id, event.user_id, event.source, event.aliases, also_move=windows.move_windows
        )


async def _customer_ids(
    conn: AsyncConnection, events: Sequence[repository.Inbound | VerdictEvent | ConsentEvent | HoldEvent]
) -> dict[tuple[str | None, str | None], int]:
    """One lookup for every identity; only unknown or newly linked ones take the slow path."""
    pairs = {(e.wa_id, e.user_id) for e in events}
    aliases = sorted({a for pair in pairs for a in pair if a})
    known = await customers.resolve(conn, aliases)
    unresolved = [
        p for p in pairs if len({known.get(a) for a in p if a}) != 1 or not all(a in known for a in p if a)
    ]
    if unresolved:
        for wa_id, user_id in sorted(unresolved, key=str):
            await customer_service.link(conn, wa_id, user_id, "webhook", also_move=windows.move_windows)
        known = await customers.resolve(conn, aliases)  # links may have merged customers
    return {p: known[p[0] or p[1] or ""] for p in pairs}
