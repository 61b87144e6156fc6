"""Answering "can I send free text to this customer now, and until when?"."""

from collections.abc import Sequence
from dataclasses import asdict
from datetime import UTC, datetime, timedelta

from window_gate import metrics
from window_gate.config import Settings
from window_gate.customer.identity import CustomerRef, parse_customer
from window_gate.db import Rows
from window_gate.errors import InvalidRecipient
from window_gate.window import repository
from window_gate.window.rule import Policy, WindowView, evaluate
from window_gate.window.schemas import (
    CustomerOut,
    FreeEntryPointOut,
    PhoneNumberOut,
    RestrictionOut,
    WindowOut,
)


def now() -> datetime:
    return datetime.now(UTC)


def policy(settings: Settings) -> Policy:
    """The rule's parameters as the settings give them (one per process, made by the lifespan)."""
    return Policy(
        window=timedelta(hours=settings.window_hours),
        margin=timedelta(seconds=settings.safety_margin_seconds),
        free_entry_point=timedelta(hours=settings.free_entry_point_hours),
        max_clock_skew=timedelta(seconds=settings.max_clock_skew_seconds),
    )


def parse_all(customers: Sequence[str]) -> list[CustomerRef]:
    refs = []
    for i, raw in enumerate(customers):
        try:
            refs.append(parse_customer(raw))
        except InvalidRecipient as exc:
            raise InvalidRecipient(f"customers[{i}]: {exc.detail}", customer=raw, index=i) from None
    return refs


async def check(
    hot: Rows, phone_number_id: str, refs: Sequence[CustomerRef], policy: Policy, at: datetime
) -> list[WindowOut]:
    """`hot`: the asyncpg pool of the hot paths (kit.Gate.hot: sends decide on the primary), or where
    window checks read (kit.Gate.reads: perhaps a replica)."""
    found = await repository.lookup(hot, phone_number_id, [r.aliases() for r in refs])
    number = number_out(found.number, at)
    answers = []
    for ref, hit in zip(refs, found.windows, strict=True):
        view = evaluate(hit.facts if hit else None, at, policy)
        metrics.WINDOW_DECISIONS.labels(view.state.value).inc()
        customer = CustomerOut.model_construct(
            input=ref.input,
            wa_id=hit.wa_id if hit else ref.wa_id,
            user_id=hit.user_id if hit else ref.user_id,
        )
        answers.append(window_out(phone_number_id, customer, view, number))
    return answers


def window_out(
    phone_number_id: str, customer: CustomerOut, view: WindowView, number: PhoneNumberOut | None = None
) -> WindowOut:
    # model_construct: every value comes typed from the rule, so validating it again is wasted work.
    fep = view.free_entry_point
    return WindowOut.model_construct(
        phone_number_id=phone_number_id,
        customer=customer,
        state=view.state,
        can_send_free_form=view.can_send_free_form,
        last_inbound_at=view.last_inbound_at,
        expires_at=view.expires_at,
        safe_until=view.safe_until,
        seconds_remaining=view.seconds_remaining,
        free_entry_point=FreeEntryPointOut.model_construct(**asdict(fep)) if fep else None,
        phone_number=number,
    )


def number_out(facts: repository.NumberFacts | None, at: datetime) -> PhoneNumberOut | None:
    """The number's context as of `at`: a restriction past its expiry is over."""
    if facts is None:
        return None
    restrictions = []
    for r in facts.restrictions:
        expires_at = _moment(r.get("expires_at"))
        if expires_at is None or expires_at > at:
            restrictions.append(RestrictionOut(type=str(r.get("type")), expires_at=expires_at))
    if not (facts.quality_event or facts.messaging_limit_tier or restrictions or facts.ban_state):
        return None
    return PhoneNumberOut(
        quality_event=facts.quality_event,
        messaging_limit_tier=facts.messaging_limit_tier,
        quality_updated_at=facts.quality_updated_at,
        restrictions=restrictions,
        account_ban_state=facts.ban_state,
    )


def _moment(value: object) -> datetime | None:
    try:
        return datetime.fromisoformat(str(value)) if value else None
    except ValueError:
        return None
