"""The statuses of a sent message: the gate's own until Meta answers, then Meta's from its webhooks."""

from enum import StrEnum


class MessageStatus(StrEnum):
    """Where a send stands. Meta may report a status added after this list: the record keeps it as Meta
    wrote it, so code reading the `status` column takes any string and compares against these."""

    PENDING = "pending"  # recorded, on its way to Meta
    ACCEPTED = "accepted"  # Meta answered with a wamid
    NOT_SENT = "not_sent"  # Meta could not be reached: the request surely did not leave
    UNKNOWN = "unknown"  # the request may have reached Meta: never re-sent
    FAILED = "failed"  # Meta refused it, in its answer or in a status webhook
    SENT = "sent"
    DELIVERED = "delivered"
    READ = "read"


LEFT = frozenset({MessageStatus.SENT, MessageStatus.DELIVERED, MessageStatus.READ})  # Meta's webhooks say so
