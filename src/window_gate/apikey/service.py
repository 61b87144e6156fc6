"""Creating API keys and recognising callers."""

import time
from collections.abc import Sequence

from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from window_gate import logs
from window_gate.apikey import repository
from window_gate.apikey.rules import PREFIX, Caller, Role, hash_key, new_key
from window_gate.db import AnyRow, HotPool
from window_gate.errors import Unauthorized


async def create(
    conn: AsyncConnection, name: str, role: Role = Role.SEND, phone_number_ids: Sequence[str] = ()
) -> str:
    """Store a new key's hash; the key itself is returned once and never stored."""
    return (await issue(conn, name, role, phone_number_ids))[0]


async def issue(
    conn: AsyncConnection, name: str, role: Role, phone_number_ids: Sequence[str]
) -> tuple[str, AnyRow]:
    """A new key and its stored row (without the key: only its hash is stored)."""
    key = new_key()
    row = await repository.insert(
        conn, name, hash_key(key), key[: len(PREFIX) + 6], role.value, sorted(set(phone_number_ids))
    )
    return key, row


class Authenticator:
    """Looks keys up by hash, remembering answers for a few seconds so the hot path skips a round trip.

    A revoked key therefore keeps working for at most ``ttl`` seconds on a replica that saw it.
    """

    def __init__(self, hot: HotPool, ttl: float) -> None:
        self.hot = hot
        self.ttl = ttl
        self._cache: dict[str, tuple[float, Caller | None]] = {}

    async def caller(self, authorization: str | None) -> Caller:
        scheme, _, key = (authorization or "").partition(" ")
        if scheme.lower() != "bearer" or not key.strip():
            raise Unauthorized("send `Authorization: Bearer <api key>`")
        key_hash = hash_key(key.strip())
        now = time.monotonic()
        hit = self._cache.get(key_hash)
        if hit is not None and hit[0] > now:
            caller = hit[1]
        else:
            caller = await repository.by_hash(self.hot, key_hash)
            if len(self._cache) > 10_000:
                self._cache.clear()
            self._cache[key_hash] = (now + self.ttl, caller)
        if caller is None:
            raise Unauthorized("unknown or revoked API key")
        logs.note(key_id=caller.id)
        return caller


class AllowList:
    """ALLOW_LISTED_NUMBERS_ONLY: the registered numbers, re-read at most every ``ttl`` seconds (as keys
    are), so a number registered or deleted is served or refused on every replica within that time."""

    def __init__(self, engine: AsyncEngine, ttl: float, enabled: bool) -> None:
        self.engine = engine
        self.ttl = ttl
        self.enabled = enabled
        self._numbers: frozenset[str] = frozenset()
        self._until = 0.0

    async def numbers(self) -> frozenset[str] | None:
        """The numbers served; None: every number (the setting is off)."""
        if not self.enabled:
            return None
        now = time.monotonic()
        if now >= self._until:
            async with self.engine.connect() as conn:
                self._numbers = await repository.registered(conn)
            self._until = now + self.ttl
        return self._numbers
