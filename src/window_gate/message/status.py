"""The statuses of a sent message: the gate's own until Meta answers, then Meta's from its webhooks."""

from collections.abc import Iterable
from enum import StrEnum


class MessageStatus(StrEnum):
    """Where a send stands. Meta may report a status added after this list: the record keeps it as Meta
    wrote it, so code reading the `status` column takes any string and compares against these."""

    PENDING = "pending"  # recorded, on its way to Meta
    ACCEPTED = "accepted"  # Meta answered with a wamid
    # Meta took a template send but holds it while it judges the template's quality (pacing): it is sent
    # later, or dropped (a `failed` status, 132015). Not `accepted`: nothing has left yet.
    HELD_FOR_QUALITY_ASSESSMENT = "held_for_quality_assessment"
    NOT_SENT = "not_sent"  # Meta could not be reached: the request surely did not leave
    UNKNOWN = "unknown"  # the request may have reached Meta: never re-sent
    FAILED = "failed"  # Meta refused it, in its answer or in a status webhook
    SENT = "sent"
    DELIVERED = "delivered"
    READ = "read"
    # Continue the conversation (message/held.py): waiting for the customer's reply; then `pending` as any
    # send, or one of these two, never sent.
    HELD = "held"
    EXPIRED = "expired"  # its hold_until passed first
    CANCELLED = "cancelled"  # DELETE /v1/conversations/…/held


LEFT = frozenset({MessageStatus.SENT, MessageStatus.DELIVERED, MessageStatus.READ})  # Meta's webhooks say so

# Meta's `messages[].message_status` in its answer to a send → the status recorded. A word not listed is
# recorded as `accepted` (Meta took the send; its answer is kept as it came).
ANSWERED = {
    "accepted": MessageStatus.ACCEPTED,
    "held_for_quality_assessment": MessageStatus.HELD_FOR_QUALITY_ASSESSMENT,
}

# The status order: a status webhook moves its message only forward. Anything may follow these (the
# gate's own statuses, and Meta's first word); after the others only what FOLLOWS lists; every other
# status is final (read, failed, not_sent, and any status Meta adds). Migration 0009's SQL function
# `message_status_after` is the same rule for webhook ingest: change one, change the other (a new
# migration replacing the function); tests/message/test_status_order.py holds them to each other.
OPEN = frozenset({MessageStatus.PENDING, MessageStatus.UNKNOWN, MessageStatus.ACCEPTED})
FOLLOWS: dict[str, frozenset[str]] = {
    MessageStatus.HELD_FOR_QUALITY_ASSESSMENT: frozenset(
        {MessageStatus.SENT, MessageStatus.DELIVERED, MessageStatus.READ, MessageStatus.FAILED}
    ),
    MessageStatus.SENT: frozenset({MessageStatus.DELIVERED, MessageStatus.READ, MessageStatus.FAILED}),
    MessageStatus.DELIVERED: frozenset({MessageStatus.READ}),
}


def status_after(current: str, updates: Iterable[str]) -> str:
    """The status after `updates` arrive in this order (a status that would move backwards is skipped)."""
    for update in updates:
        if current in OPEN or update in FOLLOWS.get(current, ()):
            current = update
    return current
