"""API keys: how they look, how they are stored, what each role may do and which objects it reaches.
No I/O.

The scope rule, the one relation every route applies: a key limited to phone numbers reaches an object
bound to numbers N when N is non-empty and every number of N is one of the key's; a key limited to none
reaches everything. Objects and their numbers: a phone number {itself}; a message {its number}; a budget
{its number} or {the budgeted key's numbers} (so a limited key never reaches an unlimited one); a WhatsApp
Business Account is reached when one of the key's numbers belongs to it (phone_numbers).
"""

import hashlib
import secrets
from collections.abc import Collection
from dataclasses import dataclass
from enum import StrEnum

from window_gate.errors import Forbidden, UnknownPhoneNumber

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
    # ALLOW_LISTED_NUMBERS_ONLY: the numbers an admin registered, the only ones served; None: any number.
    registered: frozenset[str] | None = None

    def reaches(self, numbers: Collection[str]) -> bool:
        """Whether an object bound to these phone numbers (empty: every number) is within this key's scope."""
        return not self.phone_number_ids or (bool(numbers) and self.phone_number_ids.issuperset(numbers))

    def may_use(self, phone_number_id: str) -> bool:
        return not self.phone_number_ids or phone_number_id in self.phone_number_ids

    def require(self, needed: Role, phone_number_id: str | None = None) -> None:
        if not Role(self.role).allows(needed):
            raise Forbidden(f"this key has role {self.role!r}; {needed.value!r} is needed", role=self.role)
        if phone_number_id is not None:
            self.require_number(phone_number_id)

    def require_number(self, phone_number_id: str) -> None:
        if not self.may_use(phone_number_id):
            raise Forbidden(
                f"this key may not use phone number {phone_number_id}", phone_number_id=phone_number_id
            )
        if self.registered is not None and phone_number_id not in self.registered:
            raise UnknownPhoneNumber(
                f"phone number {phone_number_id} is not registered (ALLOW_LISTED_NUMBERS_ONLY): an admin "
                "registers it with PUT /v1/phone-numbers/{id}",
                phone_number_id=phone_number_id,
            )


# The CLI's rights: whoever runs it on the gate's host holds its database, which is beyond any key.
OPERATOR = Caller("operator", "operator (CLI)", Role.ADMIN.value, frozenset())


def new_key() -> str:
    return PREFIX + secrets.token_urlsafe(32)


def hash_key(key: str) -> str:
    """Keys carry 256 random bits, so a plain SHA-256 is enough (no password stretching needed)."""
    return hashlib.sha256(key.encode()).hexdigest()
