"""Every SQL statement about message templates, their sync, and which account a phone number belongs to."""

import weakref
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import orjson
from sqlalchemy import Engine, Row, text
from sqlalchemy.ext.asyncio import AsyncConnection

DELETED = "DELETED"

# Only when something is new: a pair already recorded costs a read, never a row lock.
RECORD_ACCOUNTS = text(
    """
INSERT INTO phone_numbers AS p (phone_number_id, waba_id)
SELECT u.phone_number_id, u.waba_id
FROM unnest(CAST(:phone_number_ids AS text[]), CAST(:waba_ids AS text[])) AS u(phone_number_id, waba_id)
WHERE NOT EXISTS (
  SELECT 1 FROM phone_numbers q WHERE q.phone_number_id = u.phone_number_id AND q.waba_id = u.waba_id
)
ON CONFLICT (phone_number_id) DO UPDATE SET waba_id = EXCLUDED.waba_id
WHERE p.waba_id IS DISTINCT FROM EXCLUDED.waba_id
RETURNING phone_number_id
"""
)
# The number's own account; else the only account the gate knows of, if there is exactly one.
WABA_OF = text(
    """
SELECT COALESCE(
  (SELECT waba_id FROM phone_numbers WHERE phone_number_id = :phone_number_id),
  (SELECT min(waba_id) FROM (
     SELECT waba_id FROM phone_numbers WHERE waba_id IS NOT NULL
     UNION SELECT waba_id FROM template_syncs
     UNION SELECT waba_id FROM templates
   ) known HAVING count(*) = 1)
)
"""
)
# The accounts these numbers belong to as webhooks told it: the only proof that an account is a key's.
ACCOUNTS_OF = text(
    "SELECT DISTINCT waba_id FROM phone_numbers "
    "WHERE phone_number_id = ANY(CAST(:phone_number_ids AS text[])) AND waba_id IS NOT NULL ORDER BY 1"
)
KNOWN_ACCOUNTS = text(
    """
SELECT waba_id FROM phone_numbers WHERE waba_id IS NOT NULL
UNION SELECT waba_id FROM template_syncs
UNION SELECT waba_id FROM templates
ORDER BY 1
"""
)
# Every language of one name, and whether the account was ever synced completely (one row even when
# there is no template).
CANDIDATES = text(
    """
SELECT s.synced_at AS account_synced_at, t.*
FROM (SELECT CAST(:waba_id AS text) AS waba_id) a
LEFT JOIN template_syncs s ON s.waba_id = a.waba_id
LEFT JOIN templates t ON t.waba_id = a.waba_id AND t.name = :name
"""
)
UPSERT_LISTED = text(
    """
INSERT INTO templates AS t (id, waba_id, name, language, status, category, previous_category,
                            parameter_format, components, quality, reason, synced_at, updated_at)
SELECT r.id, :waba_id, r.name, r.language, r.status, r.category, r.previous_category,
       COALESCE(r.parameter_format, 'POSITIONAL'), r.components, r.quality, r.reason,
       now(), now()
FROM jsonb_to_recordset(CAST(:templates AS jsonb)) AS r(
  id text, name text, language text, status text, category text, previous_category text,
  parameter_format text, components jsonb, quality text, reason text)
ON CONFLICT (id) DO UPDATE SET
  waba_id = EXCLUDED.waba_id, name = EXCLUDED.name, language = EXCLUDED.language, status = EXCLUDED.status,
  category = EXCLUDED.category, previous_category = COALESCE(EXCLUDED.previous_category, t.previous_category),
  parameter_format = EXCLUDED.parameter_format, components = EXCLUDED.components,
  quality = COALESCE(EXCLUDED.quality, t.quality), reason = EXCLUDED.reason,
  meta_error_code = NULL, meta_error_at = NULL, synced_at = now(), updated_at = now()
"""
)
MARK_VANISHED = text(
    """
UPDATE templates SET status = 'DELETED', reason = 'no longer listed by Meta', updated_at = now()
WHERE waba_id = :waba_id AND status <> 'DELETED' AND NOT (id = ANY(CAST(:ids AS text[])))
RETURNING id
"""
)
RECORD_SYNC = text(
    """
INSERT INTO template_syncs (waba_id, synced_at, templates) VALUES (:waba_id, now(), :templates)
ON CONFLICT (waba_id) DO UPDATE SET synced_at = now(), templates = EXCLUDED.templates
"""
)
# A status webhook for a template the registry has not seen yet (created since the last sync) adds it
# without components: its status is known, its parameters are checked once a sync brings them.
STATUS_INSERT = text(
    """
INSERT INTO templates AS t (id, waba_id, name, language, status, category, reason)
VALUES (:id, :waba_id, :name, :language, :status, :category, :reason)
ON CONFLICT (id) DO UPDATE SET status = EXCLUDED.status, reason = EXCLUDED.reason,
  category = COALESCE(EXCLUDED.category, t.category), meta_error_code = NULL, meta_error_at = NULL,
  updated_at = now()
"""
)
STATUS_UPDATE = text(
    """
UPDATE templates SET status = :status, reason = :reason, category = COALESCE(:category, category),
  meta_error_code = NULL, meta_error_at = NULL, updated_at = now()
WHERE id = :id
"""
)
QUALITY_UPDATE = text("UPDATE templates SET quality = :quality, updated_at = now() WHERE id = :id")
CATEGORY_UPDATE = text(
    """
UPDATE templates SET category = :category, previous_category = COALESCE(:previous, previous_category),
  updated_at = now()
WHERE id = :id
"""
)
META_ERROR = text(
    """
UPDATE templates SET status = COALESCE(:status, status),
  reason = CASE WHEN CAST(:status AS text) IS NULL THEN reason ELSE :reason END,
  meta_error_code = :code, meta_error_at = now(), updated_at = now()
WHERE waba_id = :waba_id AND name = :name AND language = :language AND status <> 'DELETED'
"""
)
FIND = text(
    """
SELECT * FROM templates
WHERE (CAST(:waba_ids AS text[]) IS NULL OR waba_id = ANY(CAST(:waba_ids AS text[])))
  AND (CAST(:name AS text) IS NULL OR name = :name)
  AND (CAST(:language AS text) IS NULL OR language = :language)
  AND (CAST(:status AS text) IS NULL OR status = :status)
  AND (CAST(:category AS text) IS NULL OR category = :category)
  AND (waba_id, name, language, id) > (:after_waba_id, :after_name, :after_language, :after_id)
ORDER BY waba_id, name, language, id
LIMIT :limit
"""
)

# Pairs this process saw committed, per engine (one per app and test): the upsert is idempotent, so the
# cache only saves the webhook hot path a statement; it never decides anything.
_recorded: "weakref.WeakKeyDictionary[Engine, set[tuple[str, str]]]" = weakref.WeakKeyDictionary()


@dataclass(frozen=True, slots=True)
class Candidates:
    synced: bool  # a complete sync of the account ran: a template missing from it does not exist
    rows: list[Row[Any]]  # every language of the name (any status)


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
    written = await conn.execute(
        RECORD_ACCOUNTS, {"phone_number_ids": list(todo), "waba_ids": list(todo.values())}
    )
    fresh = {row.phone_number_id for row in written}
    # Only pairs found already there are known committed; fresh ones are confirmed by a later delivery.
    seen.update((pn, waba) for pn, waba in todo.items() if pn not in fresh)


async def waba_of(conn: AsyncConnection, phone_number_id: str) -> str | None:
    waba_id: str | None = (await conn.execute(WABA_OF, {"phone_number_id": phone_number_id})).scalar()
    return waba_id


async def accounts_of(conn: AsyncConnection, phone_number_ids: Sequence[str]) -> list[str]:
    rows = await conn.execute(ACCOUNTS_OF, {"phone_number_ids": list(phone_number_ids)})
    return [str(w) for w in rows.scalars()]


async def known_accounts(conn: AsyncConnection) -> list[str]:
    return [str(w) for w in (await conn.execute(KNOWN_ACCOUNTS)).scalars()]


async def candidates(conn: AsyncConnection, waba_id: str, name: str) -> Candidates:
    rows = list(await conn.execute(CANDIDATES, {"waba_id": waba_id, "name": name}))
    return Candidates(rows[0].account_synced_at is not None, [r for r in rows if r.id is not None])


async def replace_account(conn: AsyncConnection, waba_id: str, templates: Sequence[dict[str, Any]]) -> int:
    """Meta's complete listing of one account: upsert by Meta's id, mark what vanished DELETED.
    Returns how many were marked deleted."""
    await conn.execute(UPSERT_LISTED, {"waba_id": waba_id, "templates": orjson.dumps(templates).decode()})
    ids = [t["id"] for t in templates]
    deleted = len((await conn.execute(MARK_VANISHED, {"waba_id": waba_id, "ids": ids})).all())
    await conn.execute(RECORD_SYNC, {"waba_id": waba_id, "templates": len(templates)})
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
    params = {"id": template_id, "status": status, "reason": reason, "category": category}
    if waba_id and name and language:
        await conn.execute(STATUS_INSERT, params | {"waba_id": waba_id, "name": name, "language": language})
    else:
        await conn.execute(STATUS_UPDATE, params)


async def apply_quality(conn: AsyncConnection, template_id: str, quality: str) -> None:
    await conn.execute(QUALITY_UPDATE, {"id": template_id, "quality": quality})


async def apply_category(
    conn: AsyncConnection, template_id: str, category: str, previous: str | None
) -> None:
    await conn.execute(CATEGORY_UPDATE, {"id": template_id, "category": category, "previous": previous})


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
    await conn.execute(
        META_ERROR,
        {
            "waba_id": waba_id,
            "name": name,
            "language": language,
            "code": code,
            "status": status,
            "reason": reason,
        },
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
) -> list[Row[Any]]:
    """Templates in (waba_id, name, language, id) order, after the given key."""
    after_waba, after_name, after_language, after_id = after or ("", "", "", "")
    params = {
        "waba_ids": list(waba_ids) if waba_ids is not None else None,
        "name": name,
        "language": language,
        "status": status,
        "category": category,
        "after_waba_id": after_waba,
        "after_name": after_name,
        "after_language": after_language,
        "after_id": after_id,
        "limit": limit,
    }
    return list(await conn.execute(FIND, params))
