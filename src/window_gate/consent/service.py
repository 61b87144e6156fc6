"""Marketing opt-outs: the send path's check, and the caller's own statements; Meta's holds on one
customer's marketing (131049, 130472), remembered so that the gate refuses before anything is paid."""

import base64
import binascii
import math
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
from sqlalchemy import Row
from sqlalchemy.ext.asyncio import AsyncConnection

from window_gate.consent import repository
from window_gate.consent.rules import MARKETING
from window_gate.consent.schemas import ConsentCustomer, OptOutOut, OptOutPage
from window_gate.customer import repository as customers
from window_gate.customer import service as customer_service
from window_gate.customer.identity import CustomerRef
from window_gate.errors import MarketingLimited, OptedOut, ValidationFailed
from window_gate.graph.reactions import MARKETING_HOLDS, RETRY_AFTER_SECONDS
from window_gate.window.repository import move_windows

API = "api"
DAY = 86_400


def now() -> datetime:
    return datetime.now(UTC)


async def check_marketing(conn: AsyncConnection, phone_number_id: str, aliases: Sequence[str]) -> None:
    """Raise OptedOut when the customer these spellings name (`CustomerRef.aliases()`) has stopped
    marketing messages from this number. Utility and authentication templates are not the caller's
    question: call this for MARKETING templates only. An unknown customer has not opted out."""
    row = await repository.current(conn, phone_number_id, aliases, MARKETING)
    if row is not None and row.opted_out:
        out = _out(row, phone_number_id)
        raise OptedOut(
            f"the customer stopped marketing messages from this number ({out.source}, "
            f"{out.changed_at.isoformat()}); utility and authentication templates still pass",
            phone_number_id=phone_number_id,
            customer=out.customer.model_dump(mode="json"),
            consent=out.model_dump(mode="json", include={"opted_out", "source", "changed_at"})
            | {"category": MARKETING},
            hint="only the customer resumes marketing: WhatsApp settings, an opt-in keyword, or "
            "DELETE /v1/opt-outs/{phone_number_id}/{customer} when they asked you elsewhere",
        )


async def check_hold(
    conn: AsyncConnection, phone_number_id: str, aliases: Sequence[str], at: datetime
) -> None:
    """Raise MarketingLimited while Meta's hold on this customer's marketing from this number runs at `at`
    (call it for MARKETING templates only, as `check_marketing`)."""
    row = await repository.current_hold(conn, phone_number_id, aliases, at)
    if row is None:
        return
    retry_after = max(1, math.ceil((row.until - at).total_seconds()))
    raise MarketingLimited(
        f"Meta refused a marketing message to this customer ({row.code}) at {row.since.isoformat()}: no "
        f"marketing messages to them from this number before {row.until.isoformat()}; nothing was sent",
        retry_after=retry_after,
        phone_number_id=phone_number_id,
        customer={"wa_id": row.wa_id, "user_id": row.user_id},
        retry_not_before=row.until.isoformat(),
        hold={"code": row.code, "since": row.since.isoformat(), "until": row.until.isoformat()},
        hint="other customers are not concerned; utility and authentication templates still pass",
    )


def hold(phone_number_id: str, customer_id: int, code: int, at: datetime) -> repository.Hold | None:
    """Meta's refusal `code` at `at` as a hold on the customer's marketing, if it is one."""
    if code not in MARKETING_HOLDS:
        return None
    until = at + timedelta(seconds=RETRY_AFTER_SECONDS.get(code, DAY))
    return repository.Hold(phone_number_id, customer_id, code, at, until)


async def remember_hold(
    conn: AsyncConnection, phone_number_id: str, customer_id: int, code: int, at: datetime
) -> None:
    """Record Meta's refusal `code` (a synchronous answer) as a hold, if it is one."""
    held = hold(phone_number_id, customer_id, code, at)
    if held is not None:
        await repository.record_holds(conn, [held])


async def state(conn: AsyncConnection, phone_number_id: str, ref: CustomerRef) -> OptOutOut | None:
    row = await repository.current(conn, phone_number_id, ref.aliases(), MARKETING)
    return _out(row, phone_number_id) if row is not None else None


async def declare(
    conn: AsyncConnection, phone_number_id: str, ref: CustomerRef, opted_out: bool, at: datetime
) -> OptOutOut:
    """Record the caller's statement (source `api`) on every customer these spellings name, creating
    the customer when none is known, so that an older webhook arriving later cannot undo it."""
    known = await customers.resolve(conn, ref.aliases())
    ids = sorted(set(known.values())) or [
        await customer_service.link(conn, ref.wa_id, ref.user_id, API, also_move=move_windows)
    ]
    await repository.record(
        conn, [repository.Statement(phone_number_id, cid, MARKETING, opted_out, at, API) for cid in ids]
    )
    found = await state(conn, phone_number_id, ref)
    if found is None:  # recorded just above, in this transaction: only a broken statement gets here
        raise RuntimeError(f"the statement on {ids} was recorded but cannot be read back")
    return found


async def opted_out(
    conn: AsyncConnection, phone_number_ids: Sequence[str] | None, after: str | None, limit: int
) -> OptOutPage:
    """Customers currently opted out of marketing, `limit` at a time (None: every number)."""
    rows = await repository.opted_out(conn, MARKETING, phone_number_ids, _cursor(after), limit + 1)
    page = rows[:limit]
    last = page[-1] if len(rows) > limit else None
    return OptOutPage(
        opt_outs=[_out(row, row.phone_number_id) for row in page],
        next_after=_encode(last.phone_number_id, last.customer_id) if last is not None else None,
    )


def _out(row: Row[Any], phone_number_id: str) -> OptOutOut:
    return OptOutOut(
        phone_number_id=phone_number_id,
        customer=ConsentCustomer(wa_id=row.wa_id, user_id=row.user_id),
        opted_out=row.opted_out,
        source=row.source,
        changed_at=row.changed_at,
    )


def _encode(phone_number_id: str, customer_id: int) -> str:
    return base64.urlsafe_b64encode(orjson.dumps([phone_number_id, customer_id])).decode().rstrip("=")


def _cursor(after: str | None) -> tuple[str, int] | None:
    if not after:
        return None
    try:
        pn, cid = orjson.loads(base64.urlsafe_b64decode(after + "=" * (-len(after) % 4)))
        if isinstance(pn, str) and type(cid) is int and 0 <= cid < 2**63:
            return pn, cid
    except (ValueError, TypeError, binascii.Error):
        pass
    raise ValidationFailed("after: not a `next_after` from a previous page", after=after)
