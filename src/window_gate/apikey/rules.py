"""API keys: how they look, how they are stored, what each role may do. No I/O."""

import hashlib
import secrets
from dataclasses import dataclass
from enum import StrEnum

from window_gate.errors import Forbidden

PREFIX = "wg_"


class Role(StrEnum):
    READ = "read"  # window checks, message lookups
    SEND = "send"  # read + sending
    ADMIN = "admin"  # everything, every number

    def allows(self, needed: "Role") -> bool:
        return RANK[self] >= RANK[needed]


RANK = {Role.READ: 0, Role.SEND: 1, Role.ADMIN: 2}


@dataclass(frozen=True, slots=True)
class Caller:
    """The API key behind a request."""

    id: str
    name: str
    role: str
    phone_number_ids: frozenset[str]  # empty: every number

    def require(self, needed: Role, phone_number_id: str | None = None) -> None:
        if not Role(self.role).allows(needed):
            raise Forbidden(f"this key has role {self.role!r}; {needed.value!r} is needed", role=self.role)
        if (
            phone_number_id is not None
            and self.phone_number_ids
            and phone_number_id not in self.phone_number_ids
        ):
            raise Forbidden(
                f"this key may not use phone number {phone_number_id}", phone_number_id=phone_number_id
            )


def new_key() -> str:
    return PREFIX + secrets.token_urlsafe(32)


def hash_key(key: str) -> str:
    """Keys carry 256 random bits, so a plain SHA-256 is enough (no password stretching needed)."""
    return hashlib.sha256(key.encode()).hexdigest()
