"""Webhook ingest: a signed delivery in, window facts forward, the raw bytes kept."""

import contextlib
from datetime import datetime
from uuid import UUID

import orjson
from sqlalchemy.ext.asyncio import AsyncConnection

from window_gate import metrics
from window_gate.consent import repository as consent
from window_gate.customer import repository as customers
from window_gate.message import repository as messages
from window_gate.message.service import OPAQUE_PREFIX
from window_gate.webhook import repository
from window_gate.webhook.parse import ConsentEvent, Delivery, InboundEvent, VerdictEvent, parse_delivery
from window_gate.window import repository as windows
from window_gate.window.rule import Policy, inbound_time


async def ingest(conn: AsyncConnection, body: bytes, received_at: datetime, policy: Policy) -> Delivery:
    """Store the delivery and apply it, in the caller's transaction. Raises on malformed JSON."""
    delivery = parse_delivery(body)
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
    return delivery


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
