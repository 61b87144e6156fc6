"""Webhook ingest: a signed delivery in, window facts forward, the raw bytes kept."""

import contextlib
from datetime import datetime
from uuid import UUID

import orjson
from sqlalchemy.ext.asyncio import AsyncConnection

from window_gate import metrics
from window_gate.consent import repository as consent
from window_gate.consent.rules import DEFAULT_KEYWORDS, MARKETING, Keywords
from window_gate.customer import repository as customers
from window_gate.message import repository as messages
from window_gate.message.service import OPAQUE_PREFIX
from window_gate.template import repository as templates
from window_gate.webhook import repository
from window_gate.webhook.parse import (
    ConsentEvent,
    Delivery,
    InboundEvent,
    TemplateEvent,
    VerdictEvent,
    parse_delivery,
)
from window_gate.window import repository as windows
from window_gate.window.rule import Policy, inbound_time


async def ingest(
    conn: AsyncConnection,
    body: bytes,
    received_at: datetime,
    policy: Policy,
    keywords: Keywords = DEFAULT_KEYWORDS,
) -> Delivery:
    """Store the delivery and apply it, in the caller's transaction. Raises on malformed JSON."""
    delivery = parse_delivery(body)
    _keyword_consents(delivery, keywords, received_at, policy)
    await repository.store(conn, body)
    ids = await _customer_ids(conn, delivery)
    fresh = await windows.record_inbound(
        conn,
        [
            windows.Inbound(
                message_id=m.message_id,
                phone_number_id=m.phone_number_id,
                customer_id=ids[m.wa_id, m.user_id],
                type=m.type,
                sent_at=m.sent_at,
                counts_from=inbound_time(m.sent_at, received_at, policy),
                referral=orjson.dumps(m.referral).decode() if m.referral else None,
            )
            for m in delivery.inbound
        ],
    )
    await windows.record_verdicts(
        conn,
        [
            windows.Verdict(
                v.phone_number_id,
                ids[v.wa_id, v.user_id],
                v.closed_at and inbound_time(v.closed_at, received_at, policy),  # same clamp as messages
                v.fep_expires_at,
            )
            for v in delivery.verdicts
        ],
    )
    for m in delivery.inbound:
        delivery.counts[m.type, "opened" if m.message_id in fresh else "duplicate"] += 1
    await consent.record(
        conn,
        [
            consent.Statement(
                c.phone_number_id, ids[c.wa_id, c.user_id], c.category, c.opted_out, c.at, c.source
            )
            for c in delivery.consents
        ],
    )
    for st in delivery.statuses:
        found = await messages.apply_status(
            conn,
            id=_own_id(st.opaque),
            graph_message_id=st.graph_message_id,
            status=st.status,
            at=st.at,
            error=st.errors[0] if st.errors else None,
            pricing=st.pricing,
            detail=st.payload,
        )
        delivery.counts[f"status_{st.status}", "recorded" if found else "unknown_message"] += 1
    await templates.record_accounts(conn, delivery.accounts)  # a statement only for pairs not seen yet
    for event in delivery.templates:
        await _apply_template(conn, event)
    return delivery


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


def count(delivery: Delivery) -> None:
    """Metrics only once the transaction committed."""
    for (kind, outcome), n in delivery.counts.items():
        metrics.WEBHOOK_MESSAGES.labels(kind, outcome).inc(n)


async def _customer_ids(
    conn: AsyncConnection, delivery: Delivery
) -> dict[tuple[str | None, str | None], int]:
    """One lookup for every identity in the delivery; only unknown or newly linked ones take the slow path."""
    events: list[InboundEvent | VerdictEvent | ConsentEvent] = [
        *delivery.inbound,
        *delivery.verdicts,
        *delivery.consents,
    ]
    pairs = {(e.wa_id, e.user_id) for e in events}
    aliases = sorted({a for pair in pairs for a in pair if a})
    known = await customers.resolve(conn, aliases)
    unresolved = [
        p for p in pairs if len({known.get(a) for a in p if a}) != 1 or not all(a in known for a in p if a)
    ]
    if unresolved:
        for wa_id, user_id in sorted(unresolved, key=str):
            await customers.link(conn, wa_id, user_id, "webhook")
        known = await customers.resolve(conn, aliases)  # links may have merged customers
    return {p: known[p[0] or p[1] or ""] for p in pairs}
