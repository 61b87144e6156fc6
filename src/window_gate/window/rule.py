"""The customer service window rule: a pure function of what customers and Meta said, and the clock.

No I/O here. Everything the gate answers about a window is `evaluate(facts, now, policy)`.
"""

from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import StrEnum


class WindowState(StrEnum):
    OPEN = "open"
    CLOSING = "closing"  # still open at Meta, but inside our safety margin: free-form is refused
    EXPIRED = "expired"
    NEVER_OPENED = "never_opened"
    CLOSED_BY_META = "closed_by_meta"


@dataclass(frozen=True, slots=True)
class Policy:
    window: timedelta = timedelta(hours=24)
    margin: timedelta = timedelta(seconds=60)
    free_entry_point: timedelta = timedelta(hours=72)
    max_clock_skew: timedelta = timedelta(minutes=5)


@dataclass(frozen=True, slots=True)
class WindowFacts:
    """What is known about one (business number, customer) pair."""

    last_inbound_at: datetime | None = None
    closed_by_meta_at: datetime | None = None  # latest 131047 verdict
    referral_at: datetime | None = None  # latest inbound that came from a Click-to-WhatsApp ad
    fep_started_at: datetime | None = None  # first business reply after that referral
    fep_expires_at: datetime | None = None  # Meta's own word (conversation.expiration_timestamp)


@dataclass(frozen=True, slots=True)
class FreeEntryPoint:
    """Price, not permission: a free-entry-point window never lets free-form pass after the CSW closes."""

    active: bool
    referral_at: datetime
    reply_by: datetime
    started_at: datetime | None
    expires_at: datetime | None


@dataclass(frozen=True, slots=True)
class WindowView:
    state: WindowState
    can_send_free_form: bool
    last_inbound_at: datetime | None
    expires_at: datetime | None
    safe_until: datetime | None
    seconds_remaining: int
    free_entry_point: FreeEntryPoint | None


def inbound_time(sent_at: datetime, received_at: datetime, policy: Policy) -> datetime:
    """The instant a customer message counts from: its own timestamp, unless it claims to be from the future."""
    return received_at if sent_at > received_at + policy.max_clock_skew else sent_at


def evaluate(facts: WindowFacts | None, now: datetime, policy: Policy) -> WindowView:
    if facts is None or facts.last_inbound_at is None:
        return WindowView(WindowState.NEVER_OPENED, False, None, None, None, 0, None)
    last = facts.last_inbound_at
    expires_at = last + policy.window
    safe_until = expires_at - policy.margin
    # Meta's 131047 beats our arithmetic until the customer writes again.
    if facts.closed_by_meta_at is not None and facts.closed_by_meta_at >= last:
        state = WindowState.CLOSED_BY_META
    elif now >= expires_at:
        state = WindowState.EXPIRED
    elif now >= safe_until:
        state = WindowState.CLOSING
    else:
        state = WindowState.OPEN
    is_open = state is WindowState.OPEN
    remaining = int((safe_until - now).total_seconds()) if is_open else 0
    return WindowView(
        state, is_open, last, expires_at, safe_until, remaining, _free_entry_point(facts, now, policy)
    )


def _free_entry_point(facts: WindowFacts, now: datetime, policy: Policy) -> FreeEntryPoint | None:
    if facts.referral_at is None:
        return None
    reply_by = facts.referral_at + policy.window
    started = facts.fep_started_at
    if started is not None and not facts.referral_at <= started <= reply_by:
        started = None  # a reply outside the 24 h after the ad click starts nothing
    expires = facts.fep_expires_at or (started + policy.free_entry_point if started else None)
    active = expires is not None and now < expires
    return FreeEntryPoint(active, facts.referral_at, reply_by, started, expires)
