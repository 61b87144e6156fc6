"""Setting a number up: what an admin may change, the token sealed before it is stored."""

from typing import Any

from sqlalchemy.ext.asyncio import AsyncConnection

from window_gate.apikey.rules import Caller
from window_gate.crypto import Sealer
from window_gate.db import AnyRow
from window_gate.errors import Forbidden
from window_gate.phonenumber import repository
from window_gate.phonenumber.schemas import PhoneNumberIn


async def put(
    conn: AsyncConnection, sealer: Sealer, caller: Caller, phone_number_id: str, body: PhoneNumberIn
) -> AnyRow:
    """Register the number with the fields given (absent: unchanged; null: cleared)."""
    values: dict[str, Any] = {}
    for name in body.model_fields_set:
        value = getattr(body, name)
        if name == "access_token":
            values["access_token_encrypted"] = (
                None if value is None else sealer.seal(value.get_secret_value())
            )
        elif name == "default_reengagement_template":
            values[name] = None if value is None else value.model_dump(mode="json", exclude_unset=True)
        else:
            values[name] = value
    if "waba_id" in values and caller.phone_number_ids:
        # The account decides which templates and accounts a limited key reaches (apikey/rules.py).
        current = await repository.get(conn, phone_number_id)
        if current is None or current.waba_id != values["waba_id"]:
            raise Forbidden("only a key limited to no number may set a number's waba_id")
    return await repository.upsert(conn, phone_number_id, values)


async def reencrypt(conn: AsyncConnection, sealer: Sealer) -> int:
    """Every stored token encrypted anew under ENCRYPTION_KEY's first key; how many."""
    rows = await repository.sealed_tokens(conn)
    for row in rows:
        await repository.set_sealed(conn, row.phone_number_id, sealer.rotate(row.access_token_encrypted))
    return len(rows)
