"""Every SQL statement about message templates, their sync, and which account a phone number belongs to."""

import weakref
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import orjson
from sqlalchemy import (
    CompoundSelect,
    Engine,
    Text,
    Update,
    and_,
    any_,
    cast,
    column,
    exists,
    func,
    literal,
    not_,
    null,
    select,
    tuple_,
    union,
    update,
)
from sqlalchemy.dialects.postgresql import ARRAY, JSONB, insert
from sqlalchemy.ext.asyncio import AsyncConnection
from sqlalchemy.orm import aliased

from window_gate.db import AnyRow
from window_gate.models import MessageTemplate, PhoneNumber, TemplateSync

DELETED = "DELETED"

# Pairs this process saw committed, per engine (one per app and test): the upsert is idempotent, so the
# cache only saves the webhook hot path a statement; it never decides anything.
_recorded: "weakref.WeakKeyDictionary[Engine, set[tuple[str, str]]]" = weakref.WeakKeyDictionary()


# The fields of Meta's template listing that are kept, as jsonb_to_recordset reads them.
_LISTED = (
    ("id", Text),
    ("name", Text),
    ("language", Text),
    ("status", Text),
    ("category", Text),
    ("previous_category", Text),
    ("parameter_format", Text),
    ("components", JSONB),
    ("quality", Text),
    ("reason", Text),
)


def _update(template_id: str) -> Update:
    return update(MessageTemplate).where(MessageTemplate.id == template_id).values(updated_at=func.now())


@dataclass(frozen=True, slots=True)
class Candidates:
    synced: bool  # a complete sync of the account ran: a template missing from it does not exist
    rows: list[AnyRow]  # every language of the name (any status)


def accounts_known(engine: Any, pairs: Iterable[tuple[str, str]]) -> bool:
    """True when every pair is known committed, so `record_accounts` would write nothing."""
    seen = _recorded.get(engine, set())
    return all(p in seen for p in pairs)


async def record_accounts(conn: AsyncConnection, pairs: Iterable[tuple[str, str]]) -> None:
    """phone_number_id → waba_id as webhooks tell it (entry.id, value.metadata.phone_number_id)."""
    seen = _recorded.setdefault(conn.sync_engine, set())
    todo = dict(sorted(p for p in pairs if p not in seen))  # one account per number and statement
    if not todo:
        return
    u = (
        func.unnest(literal(list(todo), ARRAY(Text)), literal(list(todo.values()), ARRAY(Text)))
        .table_valued("phone_number_id", "waba_id")
        .render_derived(name="u")
    )
    # Only when something is new: a pair already recorded costs a read, never a row lock.
    q = aliased(PhoneNumber, name="q")
    new = select(u.c.phone_number_id, u.c.waba_id).where(
        ~exists().where(q.phone_number_id == u.c.phone_number_id, q.waba_id == u.c.waba_id)
    )
    upsert = insert(PhoneNumber).from_select(["phone_number_id", "waba_id"], new)
    upsert = upsert.on_conflict_do_update(
        index_elements=[PhoneNumber.phone_number_id],
        set_={"waba_id": upsert.excluded.waba_id},
        where=PhoneNumber.waba_id.is_distinct_from(upsert.excluded.waba_id),
    )
    written = await conn.execute(upsert.returning(PhoneNumber.phone_number_id))
    fresh = {row.phone_number_id for row in written}
    # Only pairs found already there are known committed; fresh ones are confirmed by a later delivery.
    seen.update((pn, waba) for pn, waba in todo.items() if pn not in fresh)


def _known() -> CompoundSelect[str]:
    """Every account the gate has heard of: from webhooks, syncs or templates."""
    return union(
        select(PhoneNumber.waba_id).where(PhoneNumber.waba_id.is_not(None)),
        select(TemplateSync.waba_id),
        select(MessageTemplate.waba_id),
    )


async def waba_of(conn: AsyncConnection, phone_number_id: str) -> str | None:
    """The number's own account; else the only account the gate knows of, if there is exactly one."""
    own = select(PhoneNumber.waba_id).where(PhoneNumber.phone_number_id == phone_number_id)
    known = _known().subquery("known")
    only = select(func.min(known.c.waba_id)).having(func.count() == 1)
    query = select(func.coalesce(own.scalar_subquery(), only.scalar_subquery()))
    waba_id: str | None = (await conn.execute(query)).scalar()
    return waba_id


async def accounts_of(conn: AsyncConnection, phone_number_ids: Sequence[str]) -> list[str]:
    """The accounts these numbers belong to as webhooks told it: the only proof that an account is a key's."""
    query = (
        select(PhoneNumber.waba_id)
        .distinct()
        .where(
            PhoneNumber.phone_number_id == any_(literal(list(phone_number_ids), ARRAY(Text))),
            PhoneNumber.waba_id.is_not(None),
        )
        .order_by(PhoneNumber.waba_id)
    )
    return [str(w) for w in (await conn.execute(query)).scalars()]


async def known_accounts(conn: AsyncConnection) -> list[str]:
    return [str(w) for w in (await conn.execute(_known().order_by("waba_id"))).scalars()]


async def candidates(conn: AsyncConnection, waba_id: str, name: str) -> Candidates:
    """Every language of one name, and whether the account was ever synced completely (one row even when
    there is no template)."""
    account = select(literal(waba_id, Text).label("waba_id")).subquery("a")
    query = (
        select(TemplateSync.synced_at.label("account_synced_at"), *MessageTemplate.__table__.c)
        .select_from(account)
        .outerjoin(TemplateSync, TemplateSync.waba_id == account.c.waba_id)
        .outerjoin(
            MessageTemplate, and_(MessageTemplate.waba_id == account.c.waba_id, MessageTemplate.name == name)
        )
    )
    rows = list(await conn.execute(query))
    return Candidates(rows[0].account_synced_at is not None, [r for r in rows if r.id is not None])


async def replace_account(conn: AsyncConnection, waba_id: str, templates: Sequence[dict[str, Any]]) -> int:
    """Meta's complete listing of one account: upsert by Meta's id, mark what vanished DELETED.
    Returns how many were marked deleted."""
    listed = cast(literal(orjson.dumps(templates).decode(), Text), JSONB)
    r = (
        func.jsonb_to_recordset(listed)
        .table_valued(*(column(name, type_) for name, type_ in _LISTED))
        .render_derived(name="r", with_types=True)
    )
    source = select(
        r.c.id,
        literal(waba_id, Text),
        r.c.name,
        r.c.language,
        r.c.status,
        r.c.category,
        r.c.previous_category,
        func.coalesce(r.c.parameter_format, "POSITIONAL"),
        r.c.components,
        r.c.quality,
        r.c.reason,
        func.now(),
        func.now(),
    )
    names = [name for name, _ in _LISTED]
    upsert = insert(MessageTemplate).from_select(
        [*names[:1], "waba_id", *names[1:], "synced_at", "updated_at"], source
    )
    new, t = upsert.excluded, MessageTemplate
    await conn.execute(
        upsert.on_conflict_do_update(
            index_elements=[t.id],
            set_={
                "waba_id": new.waba_id,
                "name": new.name,
                "language": new.language,
                "status": new.status,
                "category": new.category,
                "previous_category": func.coalesce(new.previous_category, t.previous_category),
                "parameter_format": new.parameter_format,
                "components": new.components,
                "quality": func.coalesce(new.quality, t.quality),
                "reason": new.reason,
                "meta_error_code": null(),
                "meta_error_at": null(),
                "components_stale_since": null(),
                "synced_at": func.now(),
                "updated_at": func.now(),
            },
        )
    )
    ids = literal([t["id"] for t in templates], ARRAY(Text))
    vanished = (
        update(MessageTemplate)
        .where(
            MessageTemplate.waba_id == waba_id,
            MessageTemplate.status != DELETED,
            not_(MessageTemplate.id == any_(ids)),
        )
        .values(status=DELETED, reason="no longer listed by Meta", updated_at=func.now())
        .returning(MessageTemplate.id)
    )
    deleted = len((await conn.execute(vanished)).all())
    sync = insert(TemplateSync).values(waba_id=waba_id, synced_at=func.now(), templates=len(templates))
    await conn.execute(
        sync.on_conflict_do_update(
            index_elements=[TemplateSync.waba_id],
            set_={"synced_at": func.now(), "templates": sync.excluded.templates},
        )
    )
    return deleted


async def apply_status(
    conn: AsyncConnection,
    *,
    waba_id: str | None,
    template_id: str,
    name: str | None,
    language: str | None,
    status: str,
    reason: str | None,
    category: str | None,
) -> None:
    if waba_id and name and language:
        # A status webhook for a template the registry has not seen yet (created since the last sync) adds
        # it without components: its status is known, its parameters are checked once a sync brings them.
        upsert = insert(MessageTemplate).values(
            id=template_id,
            waba_id=waba_id,
            name=name,
            language=language,
            status=status,
            category=category,
            reason=reason,
        )
        await conn.execute(
            upsert.on_conflict_do_update(
                index_elements=[MessageTemplate.id],
                set_={
                    "status": upsert.excluded.status,
                    "reason": upsert.excluded.reason,
                    "category": func.coalesce(upsert.excluded.category, MessageTemplate.category),
                    "meta_error_code": null(),
                    "meta_error_at": null(),
                    "updated_at": func.now(),
                },
            )
        )
        return
    changes: dict[str, Any] = {
        "status": status,
        "reason": reason,
        "meta_error_code": None,
        "meta_error_at": None,
    }
    if category is not None:
        changes["category"] = category
    await conn.execute(_update(template_id).values(changes))


async def mark_components_stale(conn: AsyncConnection, template_id: str) -> None:
    """Meta changed the template's components: the stored ones are kept (sends by name still place their
    values with them) but not checked against until the next sync replaces them."""
    await conn.execute(
        _update(template_id)
        .where(MessageTemplate.components_stale_since.is_(None))
        .values(components_stale_since=func.now())
    )


async def apply_quality(conn: AsyncConnection, template_id: str, quality: str) -> None:
    await conn.execute(_update(template_id).values(quality=quality))


async def apply_category(
    conn: AsyncConnection, template_id: str, category: str, previous: str | None
) -> None:
    changes = (
        {"category": category} if previous is None else {"category": category, "previous_category": previous}
    )
    await conn.execute(_update(template_id).values(changes))


async def record_meta_error(
    conn: AsyncConnection,
    *,
    waba_id: str,
    name: str,
    language: str,
    code: int,
    status: str | None,
    reason: str | None,
) -> None:
    changes: dict[str, Any] = {"meta_error_code": code, "meta_error_at": func.now(), "updated_at": func.now()}
    if status is not None:
        changes |= {"status": status, "reason": reason}
    await conn.execute(
        update(MessageTemplate)
        .where(
            MessageTemplate.waba_id == waba_id,
            MessageTemplate.name == name,
            MessageTemplate.language == language,
            MessageTemplate.status != DELETED,
        )
        .values(changes)
    )


async def find(
    conn: AsyncConnection,
    *,
    waba_ids: Sequence[str] | None,
    name: str | None,
    language: str | None,
    status: str | None,
    category: str | None,
    after: tuple[str, str, str, str] | None,
    limit: int,
) -> list[AnyRow]:
    """Templates in (waba_id, name, language, id) order, after the given key."""
    t = MessageTemplate
    query = select(t.__table__).order_by(t.waba_id, t.name, t.language, t.id).limit(limit)
    if waba_ids is not None:
        query = query.where(t.waba_id == any_(literal(list(waba_ids), ARRAY(Text))))
    for col, value in ((t.name, name), (t.language, language), (t.status, status), (t.category, category)):
        if value is not None:
            query = query.where(col == value)
    if after is not None:
        query = query.where(tuple_(t.waba_id, t.name, t.language, t.id) > after)
    return list(await conn.execute(query))
