"""The window rule as a pure function: facts, an injected clock and a policy in; a verdict out."""

from datetime import UTC, datetime, timedelta

import pytest

from window_gate.window.rule import (
    FreeEntryPoint,
    Policy,
    WindowFacts,
    WindowState,
    WindowView,
    evaluate,
    inbound_time,
)

T0 = datetime(2026, 11, 25, 10, 0, tzinfo=UTC)  # the customer's last message
POLICY = Policy()  # 24 h window, 60 s margin, 72 h free entry point, 5 min skew
SEC, MIN, HOUR = timedelta(seconds=1), timedelta(minutes=1), timedelta(hours=1)
DAY = 24 * HOUR
SAFE = DAY - MIN  # when free-form stops being allowed (24 h − margin)


def at(elapsed: timedelta, facts: WindowFacts | None = None, policy: Policy = POLICY) -> WindowView:
    """Evaluate `facts` (default: the customer wrote at T0) `elapsed` after T0."""
    return evaluate(WindowFacts(last_inbound_at=T0) if facts is None else facts, T0 + elapsed, policy)


def wrote(**facts: datetime | None) -> WindowFacts:
    return WindowFacts(last_inbound_at=T0, **facts)


# --- open, closing, expired ---------------------------------------------------------------------------


def test_window_open_right_after_customer_writes() -> None:
    view = at(timedelta(0))
    assert view == WindowView(
        state=WindowState.OPEN,
        can_send_free_form=True,
        last_inbound_at=T0,
        expires_at=T0 + DAY,
        safe_until=T0 + SAFE,
        seconds_remaining=int(SAFE.total_seconds()),
        free_entry_point=None,
    )


@pytest.mark.parametrize(
    ("elapsed", "state"),
    [
        (-MIN, WindowState.OPEN),  # inbound timestamp slightly ahead of our clock (within skew)
        (SEC, WindowState.OPEN),
        (12 * HOUR, WindowState.OPEN),
        (SAFE - SEC, WindowState.OPEN),  # last second before the safety margin
        (SAFE, WindowState.CLOSING),  # the margin starts exactly at 24 h − margin
        (DAY - SEC, WindowState.CLOSING),  # Meta would still accept, we refuse
        (DAY, WindowState.EXPIRED),  # exactly 24 h
        (DAY + SEC, WindowState.EXPIRED),
        (30 * DAY, WindowState.EXPIRED),
    ],
    ids=lambda v: str(v),
)
def test_free_form_allowed_only_before_safety_margin(elapsed: timedelta, state: WindowState) -> None:
    view = at(elapsed)
    assert view.state is state
    assert view.can_send_free_form is (state is WindowState.OPEN)
    assert (view.expires_at, view.safe_until) == (T0 + DAY, T0 + SAFE)


def test_free_form_refused_after_24h() -> None:
    view = at(DAY)
    assert (view.state, view.can_send_free_form, view.seconds_remaining) == (WindowState.EXPIRED, False, 0)


@pytest.mark.parametrize(
    ("elapsed", "remaining"),
    [
        (timedelta(0), 86_340),
        (HOUR, 82_740),
        (SAFE - SEC, 1),
        (SAFE - 1.5 * SEC, 1),  # whole seconds, rounded down: never promises time that is not there
        (-MIN, 86_400),  # inbound a minute ahead of our clock
        (SAFE, 0),
        (DAY - SEC, 0),
        (DAY, 0),
        (3 * DAY, 0),
    ],
    ids=lambda v: str(v),
)
def test_seconds_remaining_counts_down_to_safe_until(elapsed: timedelta, remaining: int) -> None:
    assert at(elapsed).seconds_remaining == remaining


@pytest.mark.parametrize(
    ("margin", "elapsed", "state"),
    [
        (timedelta(0), DAY - SEC, WindowState.OPEN),  # no margin: never "closing"
        (timedelta(0), DAY, WindowState.EXPIRED),
        (10 * MIN, DAY - 10 * MIN - SEC, WindowState.OPEN),
        (10 * MIN, DAY - 10 * MIN, WindowState.CLOSING),
        (DAY, timedelta(0), WindowState.CLOSING),  # a margin of the whole window never allows free-form
    ],
    ids=lambda v: str(v),
)
def test_safety_margin_is_the_policy_setting(
    margin: timedelta, elapsed: timedelta, state: WindowState
) -> None:
    view = at(elapsed, policy=Policy(margin=margin))
    assert view.state is state
    assert view.safe_until == T0 + DAY - margin


def test_window_length_is_the_policy_setting() -> None:
    policy = Policy(window=48 * HOUR)
    assert at(DAY, policy=policy).state is WindowState.OPEN
    assert at(48 * HOUR, policy=policy).state is WindowState.EXPIRED
    assert at(timedelta(0), policy=policy).expires_at == T0 + 48 * HOUR


# --- never opened ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "facts",
    [
        None,
        WindowFacts(),
        WindowFacts(closed_by_meta_at=T0),  # a 131047 for someone who never wrote
        WindowFacts(fep_expires_at=T0 + DAY),  # Meta's FEP word without any inbound on record
        WindowFacts(referral_at=T0),
    ],
    ids=["unknown customer", "empty facts", "closed by meta only", "fep expiry only", "referral only"],
)
def test_customer_who_never_wrote_cannot_get_free_form(facts: WindowFacts | None) -> None:
    assert evaluate(facts, T0, POLICY) == WindowView(
        WindowState.NEVER_OPENED, False, None, None, None, 0, None
    )


# --- Meta's 131047 verdict ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("closed_at", "elapsed", "state"),
    [
        (T0, HOUR, WindowState.CLOSED_BY_META),  # closure at the last inbound instant
        (T0 + HOUR, 2 * HOUR, WindowState.CLOSED_BY_META),  # inside what we thought was open
        (T0 + HOUR, HOUR - SEC, WindowState.CLOSED_BY_META),  # verdict dated ahead of our clock
        (T0 + HOUR, 2 * DAY, WindowState.CLOSED_BY_META),  # beats "expired" too
        (T0 - SEC, HOUR, WindowState.OPEN),  # the customer wrote after Meta's closure
        (T0 - DAY, HOUR, WindowState.OPEN),
        (T0 - SEC, DAY, WindowState.EXPIRED),  # an old closure does not change the arithmetic
    ],
    ids=lambda v: str(v),
)
def test_meta_closure_holds_until_newer_inbound(
    closed_at: datetime, elapsed: timedelta, state: WindowState
) -> None:
    view = at(elapsed, wrote(closed_by_meta_at=closed_at))
    assert view.state is state
    assert view.can_send_free_form is (state is WindowState.OPEN)
    if state is WindowState.CLOSED_BY_META:
        assert view.seconds_remaining == 0
        assert (view.last_inbound_at, view.expires_at) == (T0, T0 + DAY)  # still explained


def test_newer_inbound_reopens_window_closed_by_meta() -> None:
    closed = wrote(closed_by_meta_at=T0 + HOUR)
    assert at(2 * HOUR, closed).state is WindowState.CLOSED_BY_META
    reopened = WindowFacts(last_inbound_at=T0 + 2 * HOUR, closed_by_meta_at=T0 + HOUR)
    view = at(2 * HOUR, reopened)
    assert (view.state, view.can_send_free_form) == (WindowState.OPEN, True)
    assert view.expires_at == T0 + 2 * HOUR + DAY


# --- facts that arrived out of order -------------------------------------------------------------------


def test_rule_depends_only_on_facts_not_on_arrival_order() -> None:
    """Facts are maxima kept by the store; whichever order produced them, the same facts give one answer."""
    late_closure = WindowFacts(last_inbound_at=T0 + HOUR, closed_by_meta_at=T0)
    early_closure = WindowFacts(closed_by_meta_at=T0, last_inbound_at=T0 + HOUR)
    assert at(2 * HOUR, late_closure) == at(2 * HOUR, early_closure)
    assert at(2 * HOUR, late_closure).state is WindowState.OPEN


def test_reply_dated_before_the_ad_click_starts_no_free_entry_point() -> None:
    fep = at(HOUR, wrote(referral_at=T0, fep_started_at=T0 - MIN)).free_entry_point
    assert fep is not None
    assert (fep.started_at, fep.expires_at, fep.active) == (None, None, False)


# --- free entry point: price, not permission -------------------------------------------------------------


def test_referral_alone_offers_free_entry_point_without_starting_it() -> None:
    view = at(HOUR, wrote(referral_at=T0))
    assert view.free_entry_point == FreeEntryPoint(
        active=False, referral_at=T0, reply_by=T0 + DAY, started_at=None, expires_at=None
    )
    assert view.state is WindowState.OPEN


@pytest.mark.parametrize(
    "reply_after", [timedelta(0), 2 * HOUR, DAY - SEC, DAY], ids=["at once", "2h", "24h-1s", "24h"]
)
def test_reply_within_24h_of_referral_starts_72h_free_entry_point(reply_after: timedelta) -> None:
    started = T0 + reply_after
    facts = wrote(referral_at=T0, fep_started_at=started)
    fep = at(reply_after + SEC, facts).free_entry_point
    assert fep is not None
    assert (fep.active, fep.started_at, fep.expires_at) == (True, started, started + 72 * HOUR)
    end = reply_after + 72 * HOUR
    assert at(end - SEC, facts).free_entry_point == FreeEntryPoint(
        True, T0, T0 + DAY, started, started + 72 * HOUR
    )
    ended = at(end, facts).free_entry_point
    assert ended is not None and ended.active is False


@pytest.mark.parametrize("reply_after", [DAY + SEC, 2 * DAY], ids=["24h+1s", "48h"])
def test_reply_after_24h_of_referral_starts_nothing(reply_after: timedelta) -> None:
    fep = at(reply_after + MIN, wrote(referral_at=T0, fep_started_at=T0 + reply_after)).free_entry_point
    assert fep == FreeEntryPoint(False, T0, T0 + DAY, None, None)


def test_free_entry_point_length_is_the_policy_setting() -> None:
    facts = wrote(referral_at=T0, fep_started_at=T0 + HOUR)
    fep = at(2 * HOUR, facts, Policy(free_entry_point=7 * DAY)).free_entry_point
    assert fep is not None and fep.expires_at == T0 + HOUR + 7 * DAY


@pytest.mark.parametrize(
    ("started", "meta_expiry"),
    [(T0 + HOUR, T0 + 50 * HOUR), (T0 + HOUR, T0 + 100 * HOUR), (None, T0 + 50 * HOUR)],
    ids=["shorter than ours", "longer than ours", "we missed the reply"],
)
def test_metas_free_entry_point_expiry_wins(started: datetime | None, meta_expiry: datetime) -> None:
    facts = wrote(referral_at=T0, fep_started_at=started, fep_expires_at=meta_expiry)
    before = at(meta_expiry - T0 - SEC, facts).free_entry_point
    after = at(meta_expiry - T0, facts).free_entry_point
    assert before is not None and after is not None
    assert (before.active, before.expires_at) == (True, meta_expiry)
    assert (after.active, after.expires_at) == (False, meta_expiry)


@pytest.mark.parametrize(
    ("elapsed", "closed_at", "state"),
    [
        (DAY, None, WindowState.EXPIRED),
        (60 * HOUR, None, WindowState.EXPIRED),
        (SAFE, None, WindowState.CLOSING),
        (2 * HOUR, T0 + HOUR, WindowState.CLOSED_BY_META),
    ],
    ids=lambda v: str(v),
)
def test_free_entry_point_never_allows_free_form_outside_window(
    elapsed: timedelta, closed_at: datetime | None, state: WindowState
) -> None:
    facts = wrote(referral_at=T0, fep_started_at=T0 + MIN, closed_by_meta_at=closed_at)
    view = at(elapsed, facts)
    assert view.free_entry_point is not None and view.free_entry_point.active is True
    assert (view.state, view.can_send_free_form, view.seconds_remaining) == (state, False, 0)


# --- clock skew -------------------------------------------------------------------------------------------

RECEIVED = T0 + HOUR


@pytest.mark.parametrize(
    ("sent", "counts_from"),
    [
        (RECEIVED - 7 * DAY, RECEIVED - 7 * DAY),  # Meta retried for a week: its timestamp counts
        (RECEIVED - SEC, RECEIVED - SEC),
        (RECEIVED, RECEIVED),
        (RECEIVED + MIN, RECEIVED + MIN),  # within skew: kept as sent
        (RECEIVED + 5 * MIN, RECEIVED + 5 * MIN),  # exactly the max skew: kept
        (RECEIVED + 5 * MIN + SEC, RECEIVED),  # beyond: clamped to receive time
        (RECEIVED + 365 * DAY, RECEIVED),
    ],
    ids=lambda v: str(v - RECEIVED),
)
def test_future_inbound_timestamp_clamped_to_receive_time(sent: datetime, counts_from: datetime) -> None:
    assert inbound_time(sent, RECEIVED, POLICY) == counts_from


@pytest.mark.parametrize(
    ("skew", "sent", "counts_from"),
    [
        (timedelta(0), RECEIVED + SEC, RECEIVED),
        (timedelta(0), RECEIVED, RECEIVED),
        (HOUR, RECEIVED + HOUR, RECEIVED + HOUR),
        (HOUR, RECEIVED + HOUR + SEC, RECEIVED),
    ],
    ids=lambda v: str(v),
)
def test_max_clock_skew_is_the_policy_setting(skew: timedelta, sent: datetime, counts_from: datetime) -> None:
    assert inbound_time(sent, RECEIVED, Policy(max_clock_skew=skew)) == counts_from


def test_clamped_future_message_gives_a_normal_24h_window() -> None:
    counts_from = inbound_time(RECEIVED + DAY, RECEIVED, POLICY)
    view = evaluate(WindowFacts(last_inbound_at=counts_from), RECEIVED, POLICY)
    assert (view.expires_at, view.seconds_remaining) == (RECEIVED + DAY, int(SAFE.total_seconds()))
