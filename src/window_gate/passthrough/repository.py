"""Every SQL statement of the pass-through: which Graph objects the gate knows, and their tokens."""

from collections.abc import Sequence
from dataclasses import dataclass

from sqlalchemy import ARRAY, Text, any_, bindparam, literal, select
from sqlalchemy.ext.asyncio import AsyncConnection

from window_gate.models import PhoneNumber

NUMBER = select(PhoneNumber.access_token_encrypted.label("access_token")).where(
    PhoneNumber.phone_number_id == bindparam("id")
)
# An account's numbers, the first with a token of its own first: that token speaks for the account.
ACCOUNT = (
    select(PhoneNumber.phone_number_id, PhoneNumber.access_token_encrypted.label("access_token"))
    .where(PhoneNumber.waba_id == bindparam("id"))
    .order_by(PhoneNumber.access_token_encrypted.is_(None), PhoneNumber.phone_number_id)
)


@dataclass(frozen=True, slots=True)
class Node:
    """What `phone_numbers` says of one Graph object id."""

    number: bool  # a business number the gate has heard of
    number_token: str | None  # its own token, encrypted (crypto.Sealer opens it)
    account: bool  # the account of a number the gate has heard of
    account_token: str | None  # the first own token among that account's numbers, encrypted


async def node(conn: AsyncConnection, node_id: str) -> Node:
    numbers = (await conn.execute(NUMBER, {"id": node_id})).all()
    numbers_of_account = (await conn.execute(ACCOUNT, {"id": node_id})).all()
    return Node(
        number=bool(numbers),
        number_token=numbers[0].access_token if numbers else None,
        account=bool(numbers_of_account),
        account_token=numbers_of_account[0].access_token if numbers_of_account else None,
    )


async def token_of(conn: AsyncConnection, phone_number_id: str) -> str | None:
    token: str | None = (await conn.execute(NUMBER, {"id": phone_number_id})).scalar()
    return token


async def accounts_of(conn: AsyncConnection, phone_number_ids: Sequence[str]) -> set[str]:
    """The accounts these numbers belong to, as webhooks told it (the proof that an account is a key's)."""
    query = select(PhoneNumber.waba_id).where(
        PhoneNumber.phone_number_id == any_(literal(list(phone_number_ids), ARRAY(Text))),
        PhoneNumber.waba_id.is_not(None),
    )
    return {str(w) for w in (await conn.execute(query)).scalars()}
